-- Mobile apps: features gated on the app version, and diagnostics for the office network.

-- Offline mode shipped in iOS 5.2.0 and Android 5.3.0; older apps must not see it.
local OFFLINE_MODE_SINCE = { ios = "5.2.0", android = "5.3.0" }

flag "mobile.offline-mode" {
    description = "Offline reading in the mobile apps",
    default = "off",
    rule = function(ctx)
        local since = OFFLINE_MODE_SINCE[ctx.platform]
        if since and semver.match(ctx.app_version, ">=", since) then
            return "on"
        end
        return "off"
    end,
}

-- The new navigation exists in every 6.x app ("^" means the same major version, as in flagd);
-- half of those users get it.
flag "mobile.new-navigation" {
    description = "Bottom-tab navigation for 6.x apps",
    variants = { tabs = "bottom-tabs", drawer = "side-drawer" },
    default = "drawer",
    rule = function(ctx)
        if not semver.match(ctx.app_version, "^", "6.0.0") then
            return "drawer"
        end
        return split(ctx.device_id, { { "tabs", 50 }, { "drawer", 50 } })
    end,
}

-- Verbose client logging for devices on the office networks, with a note in rulesd's log.
local OFFICE_NETWORKS = { "10.20.0.0/16", "192.0.2.0/24", "2001:db8:20::/48" }

flag "mobile.debug-logging" {
    description = "Verbose client logging on office networks",
    variants = { verbose = "debug", normal = "info" },
    default = "normal",
    rule = function(ctx)
        if ip.in_cidr(ctx.client_ip, OFFICE_NETWORKS) then
            log("info", "debug logging for " .. ctx.client_ip)
            return "verbose"
        end
        return "normal"
    end,
}
