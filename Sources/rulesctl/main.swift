print("rulesctl")
