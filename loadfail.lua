error("x")
