// sources: rs_data.c rs_dispatch.c rs_env.c rs_freeze.c rs_helpers.c rs_json.c rs_pattern.c rs_rules.c rs_state.c rs_tests.c rs_thread.c rs_trace.c
/*
 * shape_test.c - the shapes of rule functions (rs_freeze.c, RS_SHAPE_*). Which rules are straight (no loop, calls
 * only to helpers that run no Lua: evaluated without the count hook) and which are sealed (only index the context:
 * handed its storage rather than its read-only proxy); that a rule set with a metatable set by a rule shapes none;
 * and that every answer, error text included, is the one the general path gives: the same rules are evaluated in a
 * second state whose shapes are cleared, over contexts that are small and large, partial, mistyped, nested and
 * invalid, with flags interleaved so that the storage goes from one kind of rule to the other. A sealed rule that reads
 * only constant keys has its context converted without the members it cannot read (RS_CONTEXT_KEYS_KNOWN): the
 * same comparison covers that, over contexts whose left-out members are duplicated, null, nested, escaped, invalid,
 * too deep, too many or too many for the key cache, converted whole and converted on first read.
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
    "flag \"call-result\" { rule = function(ctx) return (ctx.plan == \"pro\" and rollout or split)(ctx.user, 30) and \"on\" or \"off\" end }\n"
    "flag \"country-only\" { rule = function(ctx) return ctx.country == \"DE\" and \"on\" or \"off\" end }\n"
    "flag \"user-plan\" { rule = function(ctx)\n"
    "  if ctx.plan == \"pro\" then return ctx.user and \"on\" or \"off\" end return \"off\" end }\n"
    "flag \"ignores\" { rule = function(ctx) return \"on\" end }\n"
    "flag \"reads-w\" { rule = function(ctx) return ctx.w0 == 2 and \"on\" or \"off\" end }\n"
    "flag \"escaped\" { rule = function(ctx)\n"
    "  return ctx[\"z\\0\"] == nil and ctx.zzz == 2 and \"on\" or \"off\" end }\n";

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
    {"country-only", STRAIGHT | SEALED}, {"user-plan", STRAIGHT | SEALED}, {"ignores", STRAIGHT | SEALED},
    {"reads-w", STRAIGHT | SEALED},      {"escaped", STRAIGHT | SEALED},     {"long", SEALED},
    {"many-keys", SEALED},
};

/* The sealed rules whose context keys are not all known: they index it otherwise, or read more keys than fit. */
static const char *const keys_unknown[] = {"dynamic", "index1", "many-keys"};

#define MANY_KEYS 70

static char *rules_text(void) {
    size_t cap = strlen(rules_head) + LONG_IFS * 64 + MANY_KEYS * 64 + 256;
    char *text = malloc(cap);
    size_t n = (size_t)snprintf(text, cap, "%sflag \"long\" { rule = function(ctx)\n", rules_head);
    for (int i = 0; i < LONG_IFS; i++)
        n += (size_t)snprintf(text + n, cap - n, "  if ctx.plan == \"p%d\" then return \"on\" end\n", i);
    n += (size_t)snprintf(text + n, cap - n, "  return \"off\" end }\nflag \"many-keys\" { rule = function(ctx)\n");
    for (int i = 0; i < MANY_KEYS; i++)
        n += (size_t)snprintf(text + n, cap - n, "  if ctx.k%d == 1 then return \"on\" end\n", i);
    snprintf(text + n, cap - n, "  return ctx.plan and \"off\" or nil end }\n");
    return text;
}

static rs_state *load(const char *text, const char *extra) {
    char error[256];
    rs_limits limits;
    memset(&limits, 0, sizeof limits);
    limits.eval_instruction_limit = 2000; /* "spin" runs out; every other rule stays within */
    limits.max_context_depth = 6;
    limits.max_context_values = 400;
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
    /* Members that rules reading constant keys leave out: each must be checked as converting it would check it. */
    "{\"zzz\":null,\"zzz\":2,\"plan\":\"pro\",\"country\":\"DE\"}",
    "{\"plan\":\"pro\",\"zzz\":1,\"zzz\":2}",
    "{\"plan\":\"pro\",\"zzz\":1,\"zzz\":null}",
    "{\"plan\":\"pro\",\"user\":\"u-8\",\"plan\":\"pro\"}",
    "{\"plan\":\"pro\",\"obj\":{\"a\":1,\"a\":2}}",
    "{\"plan\":\"pro\",\"obj\":{\"a\":[1,{\"b\":null}],\"c\":\"d\"},\"country\":\"FR\"}",
    "{\"plan\":\"pro\",\"deep\":[[[[[[1]]]]]]}",
    "{\"plan\":\"pro\",\"deep\":[[[[1]]]]}",
    "{\"plan\":\"pro\",\"s\":\"caf\\u00e9 \\\"q\\\" \\ud83d\\ude00\",\"t\":\"\\x\"}",
    "{\"plan\":\"pro\",\"s\":\"\\ud83d\"}",
    "{\"plan\":\"pro\",\"s\":\"\xc3\xa9\",\"u\":\"\xff\"}",
    "{\"plan\":\"pro\",\"s\":\"ctl\x01\"}",
    "{\"plan\":\"pro\",\"s\":\"unterminated",
    "{\"plan\":\"pro\",\"n\":01}",
    "{\"plan\":\"pro\",\"n\":1.}",
    "{\"plan\":\"pro\",\"n\":-}",
    "{\"plan\":\"pro\",\"n\":1e999}",
    "{\"plan\":\"pro\",\"b\":tru}",
    "{\"plan\":\"pro\",\"b\":nul}",
    "{\"plan\":\"pro\",\"b\":true,\"c\":false,\"d\":null,\"e\":-1.5e3,\"f\":123456789012345678901234}",
    "{\"pl\\u0061n\":\"pro\",\"z\\u0000\":1,\"zzz\":2}",
    "{\"z\\u0000\":null,\"zzz\":2,\"plan\":\"free\"}",
    "{\"qq\":1,\"z\\u0000\":2,\"qq\":3}",
    "{\"a-key-longer-than-thirty-one-bytes-here\":1,\"plan\":\"pro\",\"country\":\"DE\"}",
    "{\"plan\":\"pro\",\"a-key-longer-than-thirty-one-bytes-here\":1,\"zzz\":2,\"zzz\":3}",
    "{\"plan\":\"pro\" \"x\":1}",
    "{\"plan\":\"pro\",\"x\" 1}",
    "{\"plan\":\"pro\",\"x\":1,}",
    "{\"plan\":\"pro\",\"x\":1",
    " { \"plan\" : \"pro\" , \"x\" :\t\"y\" ,\"country\":\"DE\"\n} ",
    "{\"country\":\"DE\",\"plan\":\"pro\",\"user\":\"u-1\"} x",
};

/* Contexts of many members (made at run time): `count` members named prefix0, prefix1... then, when repeat >= 0, the
 * member named prefix<repeat> again; and an array of `array` numbers between the first and the second half. With
 * more keys than the key cache has ways for in some of its sets, a conversion that left out a member whose key is
 * then replaced loses track of it, and must start again to find its duplicate. */
static char *many_members(int count, const char *prefix, int repeat, int array) {
    size_t cap = (size_t)count * 24 + (size_t)array * 2 + 96;
    char *text = malloc(cap);
    size_t n = (size_t)snprintf(text, cap, "{");
    for (int i = 0; i < count; i++) {
        n += (size_t)snprintf(text + n, cap - n, i % 2 ? "\"%s%d\":%d," : "\"%s%d\":\"v%d\",", prefix, i, i % 3);
        if (i == count / 2 && array > 0) {
            n += (size_t)snprintf(text + n, cap - n, "\"array\":[0");
            for (int k = 1; k < array; k++) n += (size_t)snprintf(text + n, cap - n, ",%d", k % 10);
            n += (size_t)snprintf(text + n, cap - n, "],");
        }
    }
    if (repeat >= 0) n += (size_t)snprintf(text + n, cap - n, "\"%s%d\":true,", prefix, repeat);
    snprintf(text + n, cap - n, "\"plan\":\"pro\"}");
    return text;
}

#define GENERATED 10

static void same_outcome(rs_state *A, const rs_outcome *a, rs_state *B, const rs_outcome *b, const char *key,
                         const char *ctx) {
    bool same = a->status == b->status && a->index == b->index && a->message_length == b->message_length &&
                memcmp(rs_text_buffer(A) + a->message_offset, rs_text_buffer(B) + b->message_offset,
                       a->message_length) == 0;
    if (!same)
        fprintf(stderr, "  %s on %.160s: %d/%d '%.*s' against %d/%d '%.*s'\n", key, ctx, a->status, a->index,
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
        bool unknown = false;
        for (size_t u = 0; u < sizeof keys_unknown / sizeof *keys_unknown; u++)
            unknown = unknown || strcmp(keys_unknown[u], expected[i].key) == 0;
        bool known = (S->flags[f].context_keys & RS_CONTEXT_KEYS_KNOWN) != 0;
        if (known != ((got & SEALED) && !unknown))
            fprintf(stderr, "  %s: context keys %s\n", expected[i].key, known ? "known" : "not known");
        check(known == ((got & SEALED) && !unknown), "a sealed rule's context keys are known when its code names them");
    }
    size_t plain = flag_index(S, "plain");
    check((S->flags[plain].shape & RS_SHAPE_STRAIGHT_MASK) < RS_FIRST_HOOK_INTERVAL,
          "a short rule is shorter than the hook's first interval");
    for (size_t i = 0; i < G->flag_count; i++) {
        G->flags[i].shape = 0;
        G->flags[i].context_keys = 0;
    }

    /* A rule reading constant keys has only those members converted. */
    rs_outcome o;
    rs_eval_flag(S, plain, contexts[0], strlen(contexts[0]), 1.0, &o);
    lua_rawgeti(S->L, LUA_REGISTRYINDEX, S->context_storage_ref);
    lua_getfield(S->L, -1, "plan");
    lua_getfield(S->L, -2, "user");
    check(o.status == RS_OK && lua_type(S->L, -2) == LUA_TSTRING && lua_isnil(S->L, -1),
          "the context of a rule reading constant keys holds those members only");
    lua_settop(S->L, 0);

    /* Every flag on every context, in two orders, so that sealed and proxied rules follow each other both ways;
     * contexts converted by size (the small ones whole, the others on first read), all whole, then all lazily. */
    size_t nfixed = sizeof contexts / sizeof *contexts, ncontexts = nfixed + GENERATED;
    const char **all = calloc(ncontexts, sizeof *all);
    memcpy(all, contexts, sizeof contexts);
    char *generated[GENERATED] = {
        many_members(90, "k", -1, 0),  many_members(95, "m", -1, 0),  many_members(20, "s", -1, 370),
        many_members(20, "s", -1, 390), many_members(300, "d", 0, 0), many_members(300, "d", 1, 0),
        many_members(300, "d", 2, 0),  many_members(300, "d", 3, 0),  many_members(300, "d", 299, 0),
        many_members(390, "k", -1, 0),
    };
    for (int i = 0; i < GENERATED; i++) all[nfixed + (size_t)i] = generated[i];
    for (int mode = RS_CONTEXTS_BY_SIZE; mode <= RS_CONTEXTS_LAZY; mode++) {
        rs_set_context_conversion(S, mode);
        rs_set_context_conversion(G, mode);
        for (int round = 0; round < 2; round++) {
            for (size_t c = 0; c < ncontexts; c++) {
                for (size_t k = 0; k < S->flag_count; k++) {
                    size_t i = round == 0 ? k : S->flag_count - 1 - k;
                    if (!trusted[i]) continue;
                    rs_outcome a, b;
                    rs_eval_flag(S, i, all[c], strlen(all[c]), 1.0, &a);
                    rs_eval_flag(G, i, all[c], strlen(all[c]), 1.0, &b);
                    same_outcome(S, &a, G, &b, S->flags[i].key, all[c]);
                }
            }
        }
    }
    check(S->flag_count == sizeof expected / sizeof *expected, "every flag has its expected shape");
    /* Every flag at once, converted once (each flag armed on its own), when no rule was shaped wrongly. */
    if (failures == 0) {
        rs_outcome *a = calloc(S->flag_count, sizeof *a), *b = calloc(S->flag_count, sizeof *b), ea, eb;
        for (size_t c = 0; c < ncontexts; c++) {
            int32_t sa = rs_eval_all_flags(S, all[c], strlen(all[c]), 1.0, a, &ea);
            int32_t sb = rs_eval_all_flags(G, all[c], strlen(all[c]), 1.0, b, &eb);
            check(sa == sb, "all flags at once: the same context is accepted or refused");
            for (size_t i = 0; sa == RS_OK && sb == RS_OK && i < S->flag_count; i++)
                same_outcome(S, &a[i], G, &b[i], S->flags[i].key, all[c]);
        }
        free(a);
        free(b);
    }
    /* A member left out whose key the cache then evicts (for a key the rule reads, in a full set): the conversion
     * loses track of it and starts again, so that its duplicate is still found. Four keys of the set of "w0" fill
     * it (cached by a rule whose keys are not known); each is then repeated after "w0", one context each, so that
     * whichever of them "w0" evicts is the one repeated once. */
    char same_set[4][16];
    unsigned target = rs_key_cache_set("w0", 2);
    for (int found = 0, i = 0; found < 4 && i < 1000000; i++) {
        snprintf(same_set[found], sizeof same_set[found], "a%d", i);
        if (rs_key_cache_set(same_set[found], strlen(same_set[found])) == target) found++;
    }
    size_t dynamic = flag_index(S, "dynamic"), reads_w = flag_index(S, "reads-w");
    for (int repeat = 0; repeat < 4; repeat++) {
        char fill[160], ctx[200];
        snprintf(fill, sizeof fill, "{\"%s\":1,\"%s\":1,\"%s\":1,\"%s\":1}", same_set[0], same_set[1],
                 same_set[2], same_set[3]);
        snprintf(ctx, sizeof ctx, "{\"%s\":1,\"%s\":1,\"%s\":1,\"%s\":1,\"w0\":2,\"%s\":3}", same_set[0],
                 same_set[1], same_set[2], same_set[3], same_set[repeat]);
        rs_outcome a, b;
        rs_eval_flag(S, dynamic, fill, strlen(fill), 1.0, &a);
        rs_eval_flag(G, dynamic, fill, strlen(fill), 1.0, &b);
        rs_eval_flag(S, reads_w, ctx, strlen(ctx), 1.0, &a);
        rs_eval_flag(G, reads_w, ctx, strlen(ctx), 1.0, &b);
        same_outcome(S, &a, G, &b, "reads-w", ctx);
        check(a.status == RS_ERR_INVALID_CONTEXT, "a duplicate of a member left out, then evicted, is refused");
    }

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
    for (int i = 0; i < GENERATED; i++) free(generated[i]);
    free(all);
    rs_state_free(S);
    rs_state_free(G);
    free(text);
    printf("shape_test: %d checks, %d failures\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
