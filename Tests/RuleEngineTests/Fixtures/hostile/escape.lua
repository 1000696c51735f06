-- expect: GENERAL
-- Reaches for everything outside the sandbox.
flag "hostile.escape" {
  rule = function(ctx)
    local handle = io.open("/etc/passwd")
    os.execute("kill -9 1")
    return require("ffi")
  end,
}
