-- expect: RESOURCE_LIMIT
-- A pattern whose backtracking is exponential in its length.
flag "hostile.patterns" {
  rule = function(ctx)
    local subject = ("a"):rep(32)
    if subject:match(("a*"):rep(28) .. "b") then return "on" end
  end,
}
