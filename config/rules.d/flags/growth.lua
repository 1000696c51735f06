-- Growth: targeting by plan, country and user lists; a fractional rollout; a time-boxed promotion.

local PAYING_PLANS = { pro = true, enterprise = true }
local BETA_TESTERS = { "u-1001", "u-1002", "u-2040" }

local function contains(list, value)
    for _, item in ipairs(list) do
        if item == value then
            return true
        end
    end
    return false
end

flag "search.semantic" {
    description = "Semantic search for paying plans and beta testers",
    default = "off",
    rule = function(ctx)
        if contains(BETA_TESTERS, ctx.user_id) then
            return "on"
        end
        local plan = ctx.user and ctx.user.plan
        if PAYING_PLANS[plan] then
            return "on"
        end
        return "off"
    end,
}

-- Prices with VAT in the EU, without elsewhere; a string-valued flag.
local EU = {
    AT = true, BE = true, BG = true, CY = true, CZ = true, DE = true, DK = true, EE = true, ES = true,
    FI = true, FR = true, GR = true, HR = true, HU = true, IE = true, IT = true, LT = true, LU = true,
    LV = true, MT = true, NL = true, PL = true, PT = true, RO = true, SE = true, SI = true, SK = true,
}

flag "pricing.display" {
    description = "How prices are shown",
    variants = { gross = "incl. VAT", net = "excl. VAT" },
    default = "net",
    rule = function(ctx)
        if EU[ctx.country] then
            return "gross"
        end
    end,
}

-- 12.5% of users; rollout is split with two buckets, with percents to 0.001.
flag "onboarding.tour" {
    description = "Guided product tour for new users",
    default = "off",
    rule = function(ctx)
        if rollout(ctx.user_id, 12.5) then
            return "on"
        end
        return "off"
    end,
}

-- A test may sit next to the rule it checks: over 2,000 sampled user ids, about 12.5% get the tour.
test "the tour reaches about 12.5% of users" {
    flag = "onboarding.tour",
    sample = { field = "user_id", count = 2000 },
    expect_share = { on = { 0.10, 0.15 } },
}

-- On only during the sale: now() is the evaluation time (a request can pin it, rulesctl has --at).
local SALE_START = 1774915200 -- 2026-03-31T00:00:00Z
local SALE_END = 1775520000 -- 2026-04-07T00:00:00Z

flag "promo.spring-sale" {
    description = "Spring sale banner, 31 March to 6 April 2026 (UTC)",
    variants = {
        on = { banner = "Spring sale: 20% off everything", discount_percent = 20 },
        off = { discount_percent = 0 },
    },
    default = "off",
    rule = function(ctx)
        local t = now()
        if t >= SALE_START and t < SALE_END then
            return "on"
        end
        return "off"
    end,
}

-- Switched off while support staffing is reviewed: every evaluation answers the default with
-- reason DISABLED, and the rule does not run.
flag "support.live-chat" {
    description = "Live chat widget on help pages",
    enabled = false,
    default = "off",
    rule = function(ctx)
        if PAYING_PLANS[ctx.user and ctx.user.plan] then
            return "on"
        end
        return "off"
    end,
}
