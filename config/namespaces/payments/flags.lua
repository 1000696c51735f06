-- Payments: the payments team's own rule set, served as the namespace "payments" (see config/rulesd-run.conf).
-- Its flags, routes and config values are apart from the default namespace's: clients ask with
-- "namespace":"payments", and a broken file here never holds up the other namespaces' reloads.

-- 3-D Secure: a challenge for large amounts, for every card from a country whose regulator requires it, and
-- never for the internal test cards.
local SCA_COUNTRIES = { DE = true, FR = true, NL = true, GB = true, IE = true, ES = true, IT = true }
local CHALLENGE_FROM_CENTS = 25000

flag "payments.3ds-challenge" {
    description = "Ask the card holder for a 3-D Secure challenge",
    variants = { challenge = "challenge", frictionless = "frictionless" },
    default = "frictionless",
    rule = function(ctx)
        if ctx.card_bin and starts_with(ctx.card_bin, "424242") then
            return "frictionless"
        end
        if SCA_COUNTRIES[ctx.country] or (ctx.amount_cents or 0) >= CHALLENGE_FROM_CENTS then
            return "challenge"
        end
        return nil -- no decision: the default, with reason DEFAULT
    end,
}

-- Instant payouts to merchants: 10% of merchants, sticky per merchant, only in EUR until the treasury signs
-- off other currencies.
flag "payments.instant-payouts" {
    description = "Pay merchants out within minutes instead of the next business day",
    default = "off",
    rule = function(ctx)
        if ctx.currency ~= "EUR" then
            return "off"
        end
        return split(ctx.merchant_id, { { "on", 10 }, { "off", 90 } })
    end,
}
