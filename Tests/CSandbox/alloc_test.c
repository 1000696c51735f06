// sources: rs_data.c rs_dispatch.c rs_env.c rs_freeze.c rs_helpers.c rs_json.c rs_pattern.c rs_rules.c rs_state.c rs_tests.c rs_thread.c rs_trace.c
/*
 * alloc_test.c - the state's allocator keeps the small blocks Lua frees for its next allocations (rs_alloc). Rules
 * that make strings of every small size, grow tables through every size class into large blocks and shrink them
 * again read back what they wrote; the state's count of bytes in use stays what Lua itself counts; kept blocks stay
 * within their bound and are used again; and a state freed with blocks kept leaks none of them (LeakSanitizer),
 * with AddressSanitizer watching every copy between classes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rs_state.h"

#include "check.h"

static const char *rules =
    "flag \"churn\" {\n"
    "  rule = function(ctx)\n"
    "    local parts = {}\n"
    "    for i = 0, 300 do parts[#parts + 1] = string.rep(string.char(65 + i % 26), i) .. ctx.tag end\n"
    "    for i = 0, 300 do\n"
    "      local s = parts[i + 1]\n"
    "      if #s ~= i + #ctx.tag or (i > 0 and s:sub(i, i) ~= string.char(65 + i % 26)) then return \"off\" end\n"
    "    end\n"
    "    local t = {}\n"
    "    for i = 1, 400 do t[i] = i * 3 end\n"
    "    for i = 1, 400 do if t[i] ~= i * 3 then return \"off\" end end\n"
    "    local h = {}\n"
    "    for i = 1, 200 do h[\"k\" .. i] = i end\n"
    "    for i = 1, 199 do h[\"k\" .. i] = nil end\n"
    "    for i = 1, 3 do h[\"n\" .. i] = i end\n"
    "    if h.k200 ~= 200 or h.n3 ~= 3 or h.k1 ~= nil then return \"off\" end\n"
    "    return \"on\"\n"
    "  end,\n"
    "}\n";

/* Bytes in use as Lua counts them. */
static size_t lua_bytes(rs_state *S) {
    return (size_t)lua_gc(S->L, LUA_GCCOUNT) * 1024 + (size_t)lua_gc(S->L, LUA_GCCOUNTB);
}

int main(void) {
    char error[256];
    for (int round = 0; round < 3; round++) {
        rs_state *S = rs_state_new(NULL, error, sizeof error);
        check(S != NULL, "state created");
        if (S == NULL) return 1;
        check(rs_load_file(S, "churn.lua", rules, strlen(rules)) == 0, "rules load");
        rs_finish_loading(S);
        int on = -1;
        for (int32_t i = 0; i < rs_flag_at(S, 0).variant_count; i++)
            if (strcmp(rs_flag_variant_at(S, 0, (size_t)i).name, "on") == 0) on = i;
        check(on >= 0, "the flag has an on variant");
        size_t kept_max = 0;
        bool reused = false;
        for (int i = 0; i < 200; i++) {
            char ctx[64];
            int n = snprintf(ctx, sizeof ctx, "{\"tag\":\"t%d-%d\"}", round, i);
            size_t kept_before = S->small_kept_bytes;
            rs_outcome o;
            rs_eval_flag(S, 0, ctx, (size_t)n, 1.0, &o);
            check(o.status == 0 && o.index == on, "the rule reads back every string and table it made");
            if (S->small_kept_bytes < kept_before) reused = true;
            if (S->small_kept_bytes > kept_max) kept_max = S->small_kept_bytes;
            check(S->memory_in_use == lua_bytes(S), "bytes in use are counted as Lua counts them");
        }
        check(reused, "kept blocks are used again");
        check(kept_max > 0 && kept_max <= (64u << 10), "blocks are kept, within 64 KiB");
        lua_gc(S->L, LUA_GCCOLLECT);
        check(S->memory_in_use == lua_bytes(S), "bytes in use after a full collection");
        rs_state_free(S); /* with blocks kept: LeakSanitizer reports any that were not freed */
    }
    printf("alloc_test: %d checks, %d failures\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
