// sources: rs_data.c rs_dispatch.c rs_env.c rs_freeze.c rs_helpers.c rs_json.c rs_pattern.c rs_rules.c rs_state.c rs_tests.c rs_thread.c rs_trace.c
/*
 * explain_test.c - the explain trace through the sandbox's public API, under AddressSanitizer: records of a flag
 * with a loop, helpers, a prerequisite and context reads, of routing, and of a trace cut at its cap; the line hook
 * gone (lua_gethookmask) once each explain returns; repeated explains and plain evaluations interleaved without
 * leaks.
 */
#include <stdio.h>
#include <string.h>

#include "rs_state.h"

#include "check.h"

static const char rules[] = "flag \"base\" { default = \"off\", "
                            "rule = function(ctx) if ctx.beta then return \"on\" end end }\n"
                            "flag \"f\" {\n"
                            "  default = \"off\",\n"
                            "  rule = function(ctx)\n"
                            "    local n = 0\n"
                            "    for i = 1, 3 do\n"
                            "      n = n + i\n"
                            "    end\n"
                            "    if flag_value(\"base\", ctx) == \"on\" and ctx.missing == nil then\n"
                            "      return split(ctx.user.id, { { \"on\", 50 }, { \"off\", 50 } })\n"
                            "    end\n"
                            "  end,\n"
                            "}\n"
                            "flag \"busy\" {\n"
                            "  default = \"off\",\n"
                            "  rule = function(ctx)\n"
                            "    for i = 1, 500 do local _ = starts_with(tostring(i), \"1\") end\n"
                            "    return \"on\"\n"
                            "  end,\n"
                            "}\n"
                            "route \"a\" { priority = 2, "
                            "match = function(req) return req.path == \"/a\" end, target = \"A\" }\n"
                            "route \"b\" { priority = 1, target = \"B\" }\n";

static size_t flag_index(rs_state *S, const char *key)
{
    for (size_t i = 0; i < rs_flag_count(S); i++)
        if (strcmp(rs_flag_at(S, i).key, key) == 0)
            return i;
    return (size_t)-1;
}

static int has_record(rs_state *S, int kind, int depth, const char *name, int line, uint32_t count)
{
    for (size_t i = 0; i < rs_trace_count(S); i++) {
        rs_trace_entry e = rs_trace_at(S, i);
        if (e.kind == kind && e.depth == depth && (name == NULL || (e.name && strcmp(e.name, name) == 0)) &&
            (line == 0 || e.line == line) && (count == 0 || e.count == count))
            return 1;
    }
    return 0;
}

static int field(rs_state *S, const char *path, int present)
{
    for (size_t i = 0; i < rs_trace_field_count(S); i++) {
        rs_trace_entry e = rs_trace_field_at(S, i);
        if (strcmp(e.name, path) == 0)
            return strstr(e.detail, present ? "\"present\":true" : "\"present\":false") != NULL;
    }
    return 0;
}

int main(void)
{
    rs_limits limits;
    memset(&limits, 0, sizeof limits);
    char error[256];
    rs_state *S = rs_state_new(&limits, error, sizeof error);
    if (S == NULL || rs_load_file(S, "r.lua", rules, strlen(rules)) != 0 || rs_finish_loading(S) != 0) {
        fprintf(stderr, "cannot load the rules\n");
        return 1;
    }
    const char ctx[] = "{\"beta\":true,\"user\":{\"id\":\"u-42\"}}";
    rs_outcome o;

    for (int round = 0; round < 50; round++) {
        rs_explain_flag(S, flag_index(S, "f"), ctx, strlen(ctx), 0, 0, &o);
        check(o.status == RS_OK, "f decides");
        check((rs_hook_mask(S) & LUA_MASKLINE) == 0, "no line hook after a flag explain");
        check(has_record(S, RS_TRACE_LINE, 0, NULL, 6, 4), "loop head counted");
        check(has_record(S, RS_TRACE_LINE, 0, NULL, 7, 3), "loop body counted");
        check(has_record(S, RS_TRACE_FLAG, 0, "base", 9, 1), "prerequisite recorded");
        check(has_record(S, RS_TRACE_LINE, 1, NULL, 1, 1), "prerequisite's line nested");
        check(has_record(S, RS_TRACE_CALL, 0, "split", 10, 1), "split recorded");
        check(field(S, "user.id", 1) && field(S, "missing", 0) && field(S, "beta", 1), "fields read");
        check(!rs_trace_truncated(S), "not cut");

        rs_eval_flag(S, flag_index(S, "f"), ctx, strlen(ctx), 0, &o);
        check(o.status == RS_OK && (rs_hook_mask(S) & LUA_MASKLINE) == 0, "plain evaluation after explain");

        rs_explain_flag(S, flag_index(S, "busy"), "{}", 2, 0, 100, &o);
        check(o.status == RS_OK, "busy decides");
        check(rs_trace_truncated(S) && rs_trace_count(S) <= 100, "cut at the cap");

        const char req[] = "{\"path\":\"/b\"}";
        rs_explain_route(S, req, strlen(req), 0, 0, &o);
        check(o.status == RS_OK && o.index == 1, "route b wins");
        check(has_record(S, RS_TRACE_ROUTE, 0, "a", 0, 1) && has_record(S, RS_TRACE_ROUTE, 0, "b", 0, 1),
              "both routes tried");
        check((rs_hook_mask(S) & LUA_MASKLINE) == 0, "no line hook after a route explain");
        size_t recorded = rs_trace_count(S);
        rs_eval_route(S, req, strlen(req), 0, &o);
        check(o.status == RS_OK && rs_trace_count(S) == recorded, "plain routing records nothing");
    }
    rs_state_free(S);

    if (failures == 0)
        printf("all %d explain checks passed\n", checks);
    return failures == 0 ? 0 : 1;
}
