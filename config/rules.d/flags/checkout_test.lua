-- Tests of the checkout flags and the routes they depend on. rulesd runs them in every candidate rule set
-- before it goes live: a failing test refuses the reload, like a syntax error.

test "the kill switch is off unless someone flips it" {
    flag = "checkout.kill-switch",
    expect = "off",
    expect_reason = "STATIC",
}

test "express pay follows the new flow in a provider country" {
    flag = "checkout.express-pay",
    context = { user_id = "u-42", country = "DE" },
    expect = "on",
}

test "internal accounts always see the control payment page" {
    flag = "checkout.payment-page",
    context = { user_id = "u-42", email = "ops@example.com" },
    expect = "control",
    expect_value = { layout = "classic", provider = "stripe" },
}

test "health checks stay local" {
    route = { method = "GET", path = "/healthz" },
    expect_route = "health",
    expect_target = "local-health",
}

test "admin pages are denied outside the office" {
    route = { method = "GET", path = "/admin/users", client_ip = "203.0.113.9" },
    expect_route = "admin-denied",
}

test "checkout calls time out after 1.5 s" {
    config = "http.timeout_ms",
    expect_value = 1500,
}
