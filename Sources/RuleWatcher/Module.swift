// Module RuleWatcher.
