-- The routing table. Routes are tried from the highest priority down; the first whose match
-- accepts the request names the target. Requests look like
--   {"method": "GET", "path": "/api/users/42", "client_ip": "203.0.113.9",
--    "headers": {"x-api-version": "2", "x-user-id": "u-42", "x-region": "us"}}

local function header(req, name)
    return req.headers and req.headers[name]
end

local OFFICE = { "10.20.0.0/16", "192.0.2.0/24" }
local WRITE_METHODS = { POST = true, PUT = true, PATCH = true, DELETE = true }
local REGIONS = { eu = "web-eu", us = "web-us", ap = "web-ap" }

route "health" {
    priority = 100,
    match = function(req)
        return req.method == "GET" and (req.path == "/healthz" or req.path == "/readyz")
    end,
    target = "local-health",
}

route "admin" {
    description = "The admin console, from the office only",
    priority = 90,
    match = function(req)
        return starts_with(req.path, "/admin/") and ip.in_cidr(req.client_ip, OFFICE)
    end,
    target = "admin-console",
}

route "admin-denied" {
    priority = 89,
    match = function(req)
        return starts_with(req.path, "/admin/")
    end,
    target = "deny",
}

-- Clients that ask for API v2 explicitly. Header values may arrive as numbers when a client
-- sends JSON, so compare their text.
route "users-v2-explicit" {
    priority = 60,
    match = function(req)
        return starts_with(req.path, "/api/users") and tostring(header(req, "x-api-version")) == "2"
    end,
    target = "users-v2",
}

-- The canary: 5% of users, sticky per user id.
route "users-v2-canary" {
    priority = 50,
    match = function(req)
        return starts_with(req.path, "/api/users") and rollout(header(req, "x-user-id"), 5) == true
    end,
    target = "users-v2",
}

route "users" {
    priority = 40,
    match = function(req)
        return starts_with(req.path, "/api/users")
    end,
    target = "users-v1",
}

route "orders-write" {
    priority = 40,
    match = function(req)
        return starts_with(req.path, "/api/orders") and WRITE_METHODS[req.method] == true
    end,
    target = "orders-primary",
}

route "orders-read" {
    priority = 30,
    match = function(req)
        return starts_with(req.path, "/api/orders")
    end,
    target = "orders-replica",
}

route "static" {
    priority = 20,
    match = function(req)
        local path = req.path
        return starts_with(path, "/static/") or ends_with(path, ".css") or ends_with(path, ".js")
    end,
    target = "cdn",
}

-- Everything else goes to the web tier of the client's region; no match function, so this
-- route takes every request that reaches it.
route "web" {
    priority = 0,
    target = function(req)
        return REGIONS[header(req, "x-region")] or "web-eu"
    end,
}
