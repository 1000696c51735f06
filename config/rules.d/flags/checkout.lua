-- Checkout: a kill switch, a percentage rollout behind it, a prerequisite and an experiment.

-- The kill switch. No rule, so it serves its default (reason STATIC); to stop the new checkout
-- everywhere, change the default to "on" and rulesd picks it up on the next reload.
flag "checkout.kill-switch" {
    description = "Turns the new checkout flow off for everyone",
    default = "off",
}

-- 20% of users, sticky per user: split hashes the flag key with the user id, so a user keeps
-- their bucket across requests and reloads, and other flags bucket independently.
flag "checkout.new-flow" {
    description = "New single-page checkout",
    default = "off",
    rule = function(ctx)
        local killed = flag_value("checkout.kill-switch", ctx)
        if killed == "on" then
            return "off"
        end
        return split(ctx.user_id, { { "on", 20 }, { "off", 80 } })
    end,
}

-- Express pay needs the new flow (a prerequisite) and a country where the provider operates.
local EXPRESS_COUNTRIES = { DE = true, FR = true, NL = true, GB = true, US = true }

flag "checkout.express-pay" {
    description = "One-click payment button; requires checkout.new-flow",
    default = "off",
    rule = function(ctx)
        if flag_value("checkout.new-flow", ctx) ~= "on" then
            return "off"
        end
        if EXPRESS_COUNTRIES[ctx.country] then
            return "on"
        end
        return nil -- no decision: the default, with reason DEFAULT
    end,
}

-- A three-way experiment whose variants are objects. Internal accounts always see the control.
flag "checkout.payment-page" {
    description = "Payment page layout experiment (PAY-311)",
    variants = {
        control = { layout = "classic", provider = "stripe" },
        compact = { layout = "compact", provider = "stripe" },
        adyen = { layout = "classic", provider = "adyen", wallets = { "apple_pay", "google_pay" } },
    },
    default = "control",
    rule = function(ctx)
        if ends_with(ctx.email, "@example.com") then
            return "control"
        end
        return split(ctx.user_id, { { "control", 50 }, { "compact", 25 }, { "adyen", 25 } })
    end,
}
