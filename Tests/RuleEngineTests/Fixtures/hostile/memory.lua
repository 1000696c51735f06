-- expect: RESOURCE_LIMIT
-- Doubles a string until something gives.
flag "hostile.memory" {
  rule = function(ctx)
    local s = "x"
    local keep = {}
    for i = 1, 64 do
      s = s .. s
      keep[i] = s
    end
  end,
}
