-- Outbound HTTP client settings.

config "http.timeout_ms" (1500)
config "http.retries" (3)
config "http.user_agent" ("shop-backend/4.2 (+https://example.com/bot)")
config "http.backoff" { initial_ms = 100, max_ms = 2000, multiplier = 2.0 }
config "http.retry_on_status" { 502, 503, 504 }
