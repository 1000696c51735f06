-- expect: GENERAL
-- Tries to rewrite what other rules rely on.
flag "hostile.tamper" {
  rule = function(ctx)
    string.upper = function() return "pwned" end
  end,
}
