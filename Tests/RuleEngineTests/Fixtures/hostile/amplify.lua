-- expect: RESOURCE_LIMIT
-- Asks C library functions for enormous amounts of work in one call.
flag "hostile.amplify" {
  rule = function(ctx)
    local s = ("x"):rep(1000)
    local t = { s, s, s }
    table.move(t, 1, 1e15, 4)
    return table.concat(t, s, 1, 1e12)
  end,
}
