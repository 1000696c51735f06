// Answers carry JSONValue and contexts are JSONObject: importing RulesClient is enough to use them, as importing
// NIOPosix is enough to use NIOCore's types.
@_exported import RuleModel
