// sources: rs_data.c rs_dispatch.c rs_env.c rs_freeze.c rs_helpers.c rs_json.c rs_pattern.c rs_rules.c rs_state.c rs_tests.c rs_thread.c rs_trace.c
/*
 * shape_test.c - the shapes of rule functions (rs_freeze.c, RS_SHAPE_*). Which rules are straight (no loop, calls
 * only to helpers that run no Lua: evaluated without the count hook) and which are sealed (only index the context:
 * handed its storage rather than its read-only proxy); that a rule set with a metatable set by a rule shapes none;
 * and that every answer, error text included, is the one the general path gives: the same rules are evaluated in a
 * second state whose shapes are cleared, over contexts that are small and large, partial, mistyped, nested and
 * invalid, with flags interleaved so that the storage goes from one kind of rule to the other.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rs_state.h"

#include "check.h"

#define LONG_IFS 100

static const char *rules_head =
    "local COUNTRIES = { DE = true, FR = true }\n"
    "local function helper(u) return u ~= nil end\n"
    "local T = { x = 1 }\n"
    "flag \"plain\" { rule = function(ctx) if ctx.plan == \"pro\" then return \"on\" end return \"off\" end }\n"
    "flag \"rollout\" { rule = function(ctx)\n"
    "  if COUNTRIES[ctx.country] and ctx.plan ~= \"free\" then return rollout(ctx.user, 30) and \"on\" or \"off\" end\n"
    "  return \"off\" end }\n"
    "flag \"semver\" { rule = function(ctx) return semver.match(ctx.version, \">=\", \"2.0.0\") and \"on\" or \"off\" end }\n"
    "flag \"split\" { variants = { a = 1, b = 2 }, default = \"a\",\n"
    "  rule = function(ctx) return split(ctx.user, { { \"a\", 50 }, { \"b\", 50 } }) end }\n"
    "flag \"nested\" { rule = function(ctx) return ctx.attrs.tier == \"gold\" and \"on\" or \"off\" end }\n"
    "flag \"dynamic\" { rule = function(ctx) return ctx[ctx.which] == true and \"on\" or \"off\" end }\n"
    "flag \"index1\" { rule = function(ctx) return ctx[1] == nil and \"on\" or \"off\" end }\n"
    "flag \"loop\" { rule = function(ctx) local n = 0 for i = 1, 3 do n = n + i end\n"
    "  return n == 6 and ctx.plan == \"pro\" and \"on\" or \"off\" end }\n"
    "flag \"while\" { rule = function(ctx) local n = 0 while n < 3 do n = n + 1 end return ctx.plan and \"on\" or \"off\" end }\n"
    "flag \"spin\" { rule = function(ctx) local n = 0 while ctx.plan do n = n + 1 end return \"on\" end }\n"
    "flag \"local-fn\" { rule = function(ctx) return helper(ctx.user) and \"on\" or \"off\" end }\n"
    "flag \"library\" { rule = function(ctx) return string.upper(ctx.plan or \"\") == \"PRO\" and \"on\" or \"off\" end }\n"
    "flag \"method\" { rule = function(ctx) return ctx.plan:upper() == \"PRO\" and \"on\" or \"off\" end }\n"
    "flag \"passes\" { rule = function(ctx) return flag_value(\"plain\", ctx) end }\n"
    "flag \"compares\" { rule = function(ctx) if ctx == nil then return \"off\" end return \"on\" end }\n"
    "flag \"captures\" { rule = function(ctx) local f = function() return ctx.plan end return f() == \"pro\" and \"on\" or \"off\" end }\n"
    "flag \"assigns\" { rule = function(ctx) ctx = T return ctx.x == 1 and \"on\" or \"off\" end }\n"
    "flag \"key\" { rule = function(ctx) local t = {} t[ctx] = 1 return \"on\" end }\n"
    "flag \"writes\" { rule = function(ctx) ctx.plan = \"x\" return \"on\" end }\n"
    "flag \"pairs\" { rule = function(ctx) for k in pairs(ctx) do if k == \"plan\" then return \"on\" end end return \"off\" end }\n"
    "flag \"none\" { rule = function() return \"on\" end }\n"
    "flag \"vararg\" { rule = function(...) local ctx = ... return ctx.plan == \"pro\" and \"on\" or \"off\" end }\n"
    "flag \"fails\" { rule = function(ctx) return ctx.attrs.tier end }\n"
    "flag \"call-result\" { rule = function(ctx) return (ctx.plan == \"pro\" and rollout or split)(ctx.user, 30) and \"on\" or \"off\" end }\n";

enum { STRAIGHT = 1, SEALED = 2 };

static const struct {
    const char *key;
    int shape;
} expected[] = {
    {"plain", STRAIGHT | SEALED},  {"rollout", STRAIGHT | SEALED}, {"semver", STRAIGHT | SEALED},
    {"split", STRAIGHT | SEALED},  {"nested", STRAIGHT | SEALED},  {"dynamic", STRAIGHT | SEALED},
    {"index1", STRAIGHT | SEALED}, {"loop", SEALED},               {"while", SEALED},
    {"spin", SEALED},              {"local-fn", SEALED},           {"library", SEALED},
    {"method", SEALED},            {"passes", 0},                  {"compares", STRAIGHT},
    {"captures", 0},               {"assigns", STRAIGHT},          {"key", STRAIGHT},
    {"writes", STRAIGHT},          {"pairs", 0},                   {"none", STRAIGHT},
    {"vararg", STRAIGHT},              {"fails", STRAIGHT | SEALED},   {"call-result", SEALED},
    {"long", SEALED},
};

static char *rules_text(void) {
    size_t cap = strlen(rules_head) + LONG_IFS * 64 + 256;
    char *text = malloc(cap);
    size_t n = (size_t)snprintf(text, cap, "%sflag \"long\" { rule = function(ctx)\n", rules_head);
    for (int i = 0; i < LONG_IFS; i++)
        n += (size_t)snprintf(text + n, cap - n, "  if ctx.plan == \"p%d\" then return \"on\" end\n", i);
    snprintf(text + n, cap - n, "  return \"off\" end }\n");
    return text;
}

static rs_state *load(const char *text, const char *extra) {
    char error[256];
    rs_limits limits;
    memset(&limits, 0, sizeof limits);
    limits.eval_instruction_limit = 2000; /* "spin" runs out; every other rule stays within */
    rs_state *S = rs_state_new(&limits, error, sizeof error);
    if (S == NULL) return NULL;
    int bad = rs_load_file(S, "rules.lua", text, strlen(text));
    if (extra != NULL) bad += rs_load_file(S, "extra.lua", extra, strlen(extra));
    bad += rs_finish_loading(S);
    if (bad != 0) {
        for (size_t i = 0; i < S->diag_count; i++) fprintf(stderr, "  %s\n", rs_diagnostic_at(S, i).message);
        rs_state_free(S);
        return NULL;
    }
    return S;
}

static size_t flag_index(rs_state *S, const char *key) {
    for (size_t i = 0; i < S->flag_count; i++)
        if (strcmp(S->flags[i].key, key) == 0) return i;
    return (size_t)-1;
}

static const char *contexts[] = {
    "{\"user\":\"u-1\",\"country\":\"DE\",\"plan\":\"pro\",\"version\":\"2.1.0\",\"which\":\"flag\",\"flag\":true}",
    "{\"user\":\"u-2\",\"country\":\"FR\",\"plan\":\"free\",\"version\":\"1.9.0\"}",
    "{\"user\":\"u-3\",\"country\":\"DE\",\"plan\":\"team\",\"attrs\":{\"tier\":\"gold\"}}",
    "{\"plan\":\"pro\"}",
    "{}",
    "",
    "{\"user\":7,\"country\":null,\"plan\":[1,2],\"version\":{}}",
    "{\"user\":\"u-4\",\"plan\":\"p42\",\"attrs\":{\"tier\":\"silver\",\"pad\":\"................................................\"},"
    "\"version\":\"3.0.0\",\"country\":\"NL\",\"which\":\"country\"}",
    "{\"user\":\"u-5\",\"plan\":\"pro\",\"attrs\":",
    "{\"user\":\"u-6\",\"plan\":\"pro\",\"plan\":\"free\"}",
    "[1,2,3]",
    "{\"user\":\"u-7\",\"country\":\"DE\",\"plan\":\"pro\",\"attrs\":{\"tier\":\"gold\"},\"version\":\"2.0.0\",\"which\":\"plan\"}",
};

static void same_outcome(rs_state *A, const rs_outcome *a, rs_state *B, const rs_outcome *b, const char *key,
                         const char *ctx) {
    bool same = a->status == b->status && a->index == b->index && a->message_length == b->message_length &&
                memcmp(rs_text_buffer(A) + a->message_offset, rs_text_buffer(B) + b->message_offset,
                       a->message_length) == 0;
    if (!same)
        fprintf(stderr, "  %s on %s: %d/%d '%.*s' against %d/%d '%.*s'\n", key, ctx, a->status, a->index,
                (int)a->message_length, rs_text_buffer(A) + a->message_offset, b->status, b->index,
                (int)b->message_length, rs_text_buffer(B) + b->message_offset);
    check(same, "a shaped rule answers as the general path does");
}

int main(void) {
    char *text = rules_text();
    rs_state *S = load(text, NULL);
    rs_state *G = load(text, NULL); /* the general path: shapes cleared */
    check(S != NULL && G != NULL, "the rules load");
    if (S == NULL || G == NULL) return 1;
    /* A rule shaped wrongly is not evaluated below: a loop taken for straight would run unhooked forever. */
    bool *trusted = calloc(S->flag_count, sizeof *trusted);
    for (size_t i = 0; i < sizeof expected / sizeof *expected; i++) {
        size_t f = flag_index(S, expected[i].key);
        check(f != (size_t)-1, "every flag is there");
        if (f == (size_t)-1) continue;
        unsigned shape = S->flags[f].shape;
        int got = ((shape & RS_SHAPE_STRAIGHT_MASK) ? STRAIGHT : 0) | ((shape & RS_SHAPE_SEALED) ? SEALED : 0);
        if (got != expected[i].shape)
            fprintf(stderr, "  %s: shape %d, expected %d (0x%x)\n", expected[i].key, got, expected[i].shape, shape);
        check(got == expected[i].shape, "each rule has the shape its code gives");
        trusted[f] = got == expected[i].shape;
    }
    size_t plain = flag_index(S, "plain");
    check((S->flags[plain].shape & RS_SHAPE_STRAIGHT_MASK) < RS_FIRST_HOOK_INTERVAL,
          "a short rule is shorter than the hook's first interval");
    for (size_t i = 0; i < G->flag_count; i++) G->flags[i].shape = 0;

    /* Every flag on every context, in two orders, so that sealed and proxied rules follow each other both ways. */
    size_t ncontexts = sizeof contexts / sizeof *contexts;
    for (int round = 0; round < 2; round++) {
        for (size_t c = 0; c < ncontexts; c++) {
            for (size_t k = 0; k < S->flag_count; k++) {
                size_t i = round == 0 ? k : S->flag_count - 1 - k;
                if (!trusted[i]) continue;
                rs_outcome a, b;
                rs_eval_flag(S, i, contexts[c], strlen(contexts[c]), 1.0, &a);
                rs_eval_flag(G, i, contexts[c], strlen(contexts[c]), 1.0, &b);
                same_outcome(S, &a, G, &b, S->flags[i].key, contexts[c]);
            }
        }
    }
    check(S->flag_count == sizeof expected / sizeof *expected, "every flag has its expected shape");
    /* Every flag at once, converted once (each flag armed on its own), when no rule was shaped wrongly. */
    if (failures == 0) {
        rs_outcome *a = calloc(S->flag_count, sizeof *a), *b = calloc(S->flag_count, sizeof *b), ea, eb;
        for (size_t c = 0; c < ncontexts; c++) {
            int32_t sa = rs_eval_all_flags(S, contexts[c], strlen(contexts[c]), 1.0, a, &ea);
            int32_t sb = rs_eval_all_flags(G, contexts[c], strlen(contexts[c]), 1.0, b, &eb);
            check(sa == sb, "all flags at once: the same context is accepted or refused");
            for (size_t i = 0; sa == RS_OK && sb == RS_OK && i < S->flag_count; i++)
                same_outcome(S, &a[i], G, &b[i], S->flags[i].key, contexts[c]);
        }
        free(a);
        free(b);
    }
    rs_outcome o;
    if (trusted[flag_index(S, "spin")]) {
        rs_eval_flag(S, flag_index(S, "spin"), contexts[0], strlen(contexts[0]), 1.0, &o);
        check(o.status == RS_ERR_RESOURCE_LIMIT, "a loop still runs out of instructions");
    }
    rs_eval_flag(S, flag_index(S, "writes"), contexts[0], strlen(contexts[0]), 1.0, &o);
    check(o.status != RS_OK, "a rule cannot write to its context");
    rs_eval_flag(S, plain, contexts[0], strlen(contexts[0]), 1.0, &o);
    check(o.status == RS_OK && lua_gethook(S->L) != NULL, "the hook is back once a straight rule has run");

    /* A metatable set while loading may bring Lua metamethods anywhere: nothing is shaped. */
    rs_state *M = load(text, "local mt = setmetatable({}, { __index = function(t, k) return k end })\n");
    check(M != NULL, "rules with a metatable load");
    if (M != NULL) {
        bool any = false;
        for (size_t i = 0; i < M->flag_count; i++) any = any || M->flags[i].shape != 0;
        check(!any, "no rule is shaped once a metatable was set");
        rs_state_free(M);
    }
    free(trusted);
    rs_state_free(S);
    rs_state_free(G);
    free(text);
    printf("shape_test: %d checks, %d failures\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
