// Module RulesProtocol.
