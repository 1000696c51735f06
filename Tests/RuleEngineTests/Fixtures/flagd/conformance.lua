-- flagd's conformance flags (flagd-testbed gherkin features, the "v2" fractional algorithm), written as rules.
-- flagd's implicit bucketing value is flag key .. targetingKey, which is split(unit, buckets) here (the flag key is
-- the default seed); an explicit bucketing value is hashed alone, which is split(unit, buckets, "").

local suits = { { "clubs", 25 }, { "diamonds", 25 }, { "hearts", 25 }, { "spades", 25 } }
local suit_variants = { clubs = "clubs", diamonds = "diamonds", hearts = "hearts", spades = "spades", wild = "wild" }

-- string.feature
flag "starts-ends-flag" {
  variants = { prefix = "prefix", postfix = "postfix", none = "none" },
  default = "none",
  rule = function(ctx)
    if starts_with(ctx.id, "abc") then return "prefix" end
    if ends_with(ctx.id, "xyz") then return "postfix" end
    return "none"
  end,
}

-- semver.feature
flag "equal-greater-lesser-version-flag" {
  variants = { equal = "equal", greater = "greater", lesser = "lesser", none = "none" },
  default = "none",
  rule = function(ctx)
    if semver.match(ctx.version, "=", "2.0.0") then return "equal" end
    if semver.match(ctx.version, ">", "2.0.0") then return "greater" end
    if semver.match(ctx.version, "<", "2.0.0") then return "lesser" end
    return "none"
  end,
}

flag "major-minor-version-flag" {
  variants = { minor = "minor", major = "major", none = "none" },
  default = "none",
  rule = function(ctx)
    if semver.match(ctx.version, "~", "3.0.0") then return "minor" end
    if semver.match(ctx.version, "^", "3.0.0") then return "major" end
    return "none"
  end,
}

flag "semver-partial-version-flag" {
  variants = { match = "match", ["no-match"] = "no-match" },
  default = "no-match",
  rule = function(ctx)
    return semver.match(ctx.version, "^", "1") and "match" or "no-match"
  end,
}

flag "semver-invalid-version-flag" {
  variants = { ["true"] = "true", ["false"] = "false", fallback = "fallback" },
  default = "fallback",
  rule = function(ctx)
    -- flagd's sem_ver yields null for something that is not a version: no decision.
    local order = semver.compare(ctx.version, "1.0.0")
    if order == nil then return nil end
    return order == 0 and "true" or "false"
  end,
}

-- fractional.feature
flag "fractional-single-entry-flag" {
  variants = { single = "single", fallback = "fallback" },
  default = "fallback",
  rule = function(ctx) return split(ctx.targetingKey, { { "single", 1 } }) end,
}

flag "fractional-negative-weight-flag" {
  variants = { one = "one", two = "two", fallback = "fallback" },
  default = "fallback",
  rule = function(ctx) return split(ctx.targetingKey, { { "one", -50 }, { "two", 100 } }, "") end,
}

flag "fractional-null-bucket-key-flag" {
  variants = { one = "one", two = "two", fallback = "fallback" },
  default = "fallback",
  rule = function(ctx) return split(ctx.missing_key, { { "one", 50 }, { "two", 50 } }, "") end,
}

flag "fractional-nested-weight-flag" {
  variants = { red = "red", blue = "blue", fallback = "fallback" },
  default = "fallback",
  rule = function(ctx)
    local red = ctx.tier == "premium" and 100 or 0
    return split(ctx.targetingKey, { { "red", red }, { "blue", 10 } }, "")
  end,
}

flag "fractional-flag" {
  variants = suit_variants,
  default = "wild",
  rule = function(ctx) return split(ctx.user.name, suits) end,
}

flag "fractional-flag-A-shared-seed" {
  variants = suit_variants,
  default = "wild",
  rule = function(ctx) return split(ctx.user.name, suits, "shared-seed") end,
}

flag "fractional-flag-shorthand" {
  variants = { heads = "heads", tails = "tails", draw = "draw" },
  default = "draw",
  rule = function(ctx) return split(ctx.targetingKey, { { "heads" }, { "tails", 1 } }) end,
}

flag "fractional-hash-edge-flag" {
  variants = { lower = "lower", upper = "upper" },
  default = "lower",
  rule = function(ctx) return split(ctx.targetingKey, { { "lower", 50 }, { "upper", 50 } }, "") end,
}

-- The same bucketing as fractional-flag, with flagd's explicit "cat" of flag key and unit spelled out.
flag "fractional-flag-explicit" {
  variants = suit_variants,
  default = "wild",
  rule = function(ctx) return split("fractional-flag" .. ctx.user.name, suits, "") end,
}
