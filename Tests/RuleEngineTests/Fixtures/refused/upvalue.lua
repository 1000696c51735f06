-- expect-load: 5: assigns to the file-level variable 'last'
local last
flag "refused.upvalue" {
  rule = function(ctx)
    last = ctx.user
  end,
}
