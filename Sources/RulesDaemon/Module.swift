// Module RulesDaemon.
