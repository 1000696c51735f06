-- expect: GENERAL
-- Raises an error object whose __tostring raises in turn.
flag "hostile.errors" {
  rule = function(ctx)
    error(setmetatable({}, { __tostring = function() error("and again") end }))
  end,
}
