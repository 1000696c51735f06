-- expect-load: 4: assigns to the global 'counter'
flag "refused.global" {
  rule = function(ctx)
    counter = (counter or 0) + 1
  end,
}
