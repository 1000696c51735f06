-- expect: TYPE_MISMATCH
-- Returns something that is not a variant: a cyclic table.
flag "hostile.liar" {
  rule = function(ctx)
    local t = {}
    t.self = t
    return t
  end,
}
