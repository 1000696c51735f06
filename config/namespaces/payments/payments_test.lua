-- Tests of the payments rules. rulesd runs them in every candidate rule set of the namespace before it goes live:
-- a failing test refuses that namespace's reload, and only that one.

test "EU cards are challenged" {
    flag = "payments.3ds-challenge",
    context = { country = "DE", amount_cents = 1200, card_bin = "535522" },
    expect = "challenge",
    expect_reason = "TARGETING_MATCH",
}

test "small payments outside the SCA countries are frictionless" {
    flag = "payments.3ds-challenge",
    context = { country = "US", amount_cents = 1200, card_bin = "535522" },
    expect = "frictionless",
    expect_reason = "DEFAULT",
}

test "the internal test cards are never challenged" {
    flag = "payments.3ds-challenge",
    context = { country = "DE", amount_cents = 900000, card_bin = "4242424242" },
    expect = "frictionless",
}

test "instant payouts reach about 10% of EUR merchants" {
    flag = "payments.instant-payouts",
    context = { currency = "EUR" },
    sample = { field = "merchant_id", count = 2000 },
    expect_share = { on = { 0.07, 0.13 } },
}

test "no instant payouts outside EUR" {
    flag = "payments.instant-payouts",
    context = { currency = "USD", merchant_id = "m-1" },
    expect = "off",
}

test "SEPA debits go to the bank" {
    route = { method = "sepa_debit", currency = "EUR", amount_cents = 5000 },
    expect_route = "sepa-direct-debit",
    expect_target = "bank-sepa",
}

test "large card payments go to adyen whatever the currency" {
    route = { method = "card", currency = "USD", amount_cents = 250000 },
    expect_route = "cards-large",
    expect_target = "adyen",
}

test "US card payments go to stripe" {
    route = { method = "card", currency = "USD", amount_cents = 4200 },
    expect_route = "cards",
    expect_target = "stripe",
}

test "an unknown method is not routed" {
    route = { method = "cash", currency = "EUR" },
    expect_route = false,
}

test "captures wait a day" { config = "payments.capture_delay_hours", expect_value = 24 }
