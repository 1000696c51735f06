print("rulesd")
