-- Database and cache settings.

local REPLICAS = { "db-replica-1.internal:5432", "db-replica-2.internal:5432" }

config "db.pool" { size = 10, idle_s = 30 }
config "db.replicas" (REPLICAS)
config "db.statement_timeout_ms" (5000)
config "cache.enabled" (true)
config "cache.ttl_s" (300)
config "cache.key_prefix" ("shop:v4:")
config "checkout.currencies" { "EUR", "USD", "GBP" }
config "checkout.max_cart_items" (50)
