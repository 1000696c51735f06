-- Which payment provider (PSP) takes a payment. Requests look like
--   {"method": "card", "currency": "EUR", "country": "DE", "amount_cents": 4200}

route "sepa-direct-debit" {
    description = "SEPA direct debits go to the bank connection",
    priority = 50,
    match = function(req)
        return req.method == "sepa_debit" and req.currency == "EUR"
    end,
    target = "bank-sepa",
}

-- Large card payments go to the provider with the better fraud screening.
route "cards-large" {
    priority = 40,
    match = function(req)
        return req.method == "card" and (req.amount_cents or 0) >= 100000
    end,
    target = "adyen",
}

-- Every other card payment: by the card's region.
local CARD_PROVIDERS = { EUR = "adyen", GBP = "adyen", USD = "stripe" }

route "cards" {
    priority = 30,
    match = function(req)
        return req.method == "card"
    end,
    target = function(req)
        return CARD_PROVIDERS[req.currency] or "stripe"
    end,
}

config "payments.capture_delay_hours" (24)
config "payments.retry" { attempts = 3, backoff_ms = { 200, 1000, 5000 } }
config "payments.refund_window_days" (90)
