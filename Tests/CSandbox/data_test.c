// sources: rs_data.c rs_dispatch.c rs_env.c rs_freeze.c rs_helpers.c rs_json.c rs_pattern.c rs_rules.c rs_state.c rs_tests.c rs_thread.c rs_trace.c
/*
 * data_test.c - tests of data files (rs_data.c): parsing lists and JSON into sets and maps, the file:line of
 * malformed files, and data objects inside a real sandboxed state (lookups, read-only, shared between states).
 * Built with AddressSanitizer, so a data set freed while a state still points at it fails here.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rule_data.h"
#include "rule_sandbox.h"

#include "check.h"

static rs_data *parse(int format, const char *text, int32_t *line, char *error) {
    return rs_data_parse(format, text, strlen(text), line, error, 256);
}

static void expect_error(int format, const char *text, int32_t want_line, const char *want, const char *label) {
    int32_t line = -1;
    char error[256] = "";
    rs_data *D = parse(format, text, &line, error);
    check(D == NULL, label);
    if (D) {
        rs_data_release(D);
        return;
    }
    if (line != want_line || strstr(error, want) == NULL) {
        failures++;
        fprintf(stderr, "FAIL %s: got line %d '%s', want line %d '%s'\n", label, line, error, want_line, want);
    }
    checks++;
}

static void test_text_lists(void) {
    int32_t line;
    char error[256];
    rs_data *D = parse(RS_DATA_TEXT, "# beta users\n  alice  \n\nbob\r\n\t# indented comment\nalice\ncarol", &line,
                       error);
    check(D != NULL, "a list parses");
    if (!D) return;
    check(rs_data_entries(D) == 3, "comments, blank lines and duplicates are not entries");
    check(rs_data_contains(D, "alice", 5), "surrounding whitespace is trimmed");
    check(rs_data_contains(D, "bob", 3), "CRLF line ends are trimmed");
    check(rs_data_contains(D, "carol", 5), "the last line needs no newline");
    check(!rs_data_contains(D, "# beta users", 12), "comment lines are not entries");
    check(!rs_data_contains(D, "", 0), "the empty string is not an entry");
    check(!rs_data_is_map(D), "a list is a set");
    check(rs_data_bytes(D) > 0, "a set reports its memory");
    rs_data_release(D);
    expect_error(RS_DATA_TEXT, "ok\nbad\xff\n", 2, "not valid UTF-8", "invalid UTF-8 names its line");
    rs_data *B = parse(RS_DATA_TEXT, "\xEF\xBB\xBF" "first\nsecond\n", &line, error);
    check(B && rs_data_contains(B, "first", 5), "a byte order mark is not part of the first entry");
    rs_data_release(B);
}

static void test_large_list(void) {
    size_t n = 200000;
    char *text = malloc(n * 12);
    size_t len = 0;
    for (size_t i = 0; i < n; i++) len += (size_t)sprintf(text + len, "user-%zu\n", i);
    int32_t line;
    char error[256];
    rs_data *D = rs_data_parse(RS_DATA_TEXT, text, len, &line, error, sizeof error);
    check(D && rs_data_entries(D) == n, "a large list keeps every entry");
    int all = 1;
    for (size_t i = 0; D && i < n; i += 997) {
        char key[32];
        int k = sprintf(key, "user-%zu", i);
        all &= rs_data_contains(D, key, (size_t)k);
    }
    check(all, "every sampled entry of a large list is found");
    check(D && !rs_data_contains(D, "user-200000", 11), "a missing key of a large list is not found");
    rs_data_release(D);
    free(text);
}

static void test_json(void) {
    int32_t line;
    char error[256];
    rs_data *S = parse(RS_DATA_JSON, "[\"a\", \"b\\u00e9\", \"a\", \"\\ud83d\\ude00\"]", &line, error);
    check(S && !rs_data_is_map(S) && rs_data_entries(S) == 3, "a JSON array is a set without duplicates");
    check(S && rs_data_contains(S, "b\xc3\xa9", 3), "escapes are decoded");
    check(S && rs_data_contains(S, "\xf0\x9f\x98\x80", 4), "surrogate pairs are decoded");
    rs_data_release(S);
    rs_data *M = parse(RS_DATA_JSON, "{\n \"eu\": \"fra\",\n \"us\": 3,\n \"x\": 1.5, \"y\": true\n}\n", &line, error);
    check(M && rs_data_is_map(M) && rs_data_entries(M) == 4, "a JSON object is a map");
    check(M && rs_data_contains(M, "eu", 2) && !rs_data_contains(M, "fra", 3), "a map's keys are its members");
    rs_data_release(M);
    expect_error(RS_DATA_JSON, "[\n\"a\",\n\"b\",\n3\n]", 4, "not a string", "a non-string list entry names its line");
    expect_error(RS_DATA_JSON, "{\n\"a\": 1,\n\"a\": 2\n}", 3, "duplicate key", "a duplicate key names its line");
    expect_error(RS_DATA_JSON, "{\n\"a\": [1]\n}", 2, "strings, numbers or booleans", "nested values are refused");
    expect_error(RS_DATA_JSON, "[\n\"a\"\n\"b\"]", 3, "expected ','", "a missing comma names its line");
    expect_error(RS_DATA_JSON, "[\"a\"] x", 1, "text after", "trailing text is refused");
    expect_error(RS_DATA_JSON, "\n\n\"a\"", 3, "array of strings", "a scalar file is refused");
    expect_error(RS_DATA_JSON, "[\"a", 1, "unterminated", "an unterminated string is refused");
}

/* Loads `rule` with `data` offered as beta.txt, evaluates flag "f" for ctx and returns the variant index. */
static rs_state *load_state(const char *rule, const char *path, const char *data, rs_data *shared) {
    char error[256];
    rs_state *S = rs_state_new(NULL, error, sizeof error);
    if (!S) return NULL;
    if (shared) rs_state_offer_data_set(S, path, shared);
    else rs_state_offer_data_file(S, path, data, strlen(data));
    rs_load_file(S, "r.lua", rule, strlen(rule));
    rs_finish_loading(S);
    return S;
}

static int variant(rs_state *S, const char *ctx) {
    rs_outcome o;
    rs_eval_flag(S, 0, ctx, strlen(ctx), 0, &o);
    return o.status == RS_OK ? o.index : -1 - o.status;
}

static void test_in_state(void) {
    const char *rule = "local beta = data 'beta'\n"
                       "flag 'f' { rule = function(ctx) return beta:has(ctx.user) and 'on' or 'off' end }\n";
    rs_state *A = load_state(rule, "beta.txt", "alice\n42\n", NULL);
    check(A && rs_diagnostic_count(A) == 0, "a rule file that uses a data file loads");
    if (!A || rs_diagnostic_count(A)) {
        for (size_t i = 0; A && i < rs_diagnostic_count(A); i++)
            fprintf(stderr, "  %s:%d: %s\n", rs_diagnostic_at(A, i).file, rs_diagnostic_at(A, i).line,
                    rs_diagnostic_at(A, i).message);
        rs_state_free(A);
        return;
    }
    /* Variants of a boolean flag are sorted by name: off = 0, on = 1. */
    check(variant(A, "{\"user\":\"alice\"}") == 1, "a member is found");
    check(variant(A, "{\"user\":\"bob\"}") == 0, "a non-member is not");
    check(variant(A, "{\"user\":42}") == 1, "an integer is looked up in decimal");
    check(variant(A, "{}") == 0, "nil is no member");
    check(rs_state_data_count(A) == 1, "the state lists the data set it used");
    rs_data *shared = rs_state_data_at(A, 0).data;
    check(strcmp(rs_state_data_at(A, 0).name, "beta") == 0, "the data set keeps its name");
    rs_data_retain(shared);
    rs_state_free(A);
    /* A second state shares the built set; it outlives the first state. */
    rs_state *B = load_state(rule, "beta.txt", NULL, shared);
    rs_data_release(shared);
    check(B && rs_diagnostic_count(B) == 0, "a second state loads from the shared data set");
    if (B) check(variant(B, "{\"user\":\"alice\"}") == 1, "the shared data set answers in the second state");
    rs_state_free(B);

    const char *writes = "local beta = data 'beta'\n"
                         "flag 'f' { rule = function(ctx)\n"
                         "  local ok1 = pcall(function(o) o.x = 1 end, beta)\n"
                         "  local ok2 = pcall(function(o) getmetatable(o).__index = {} end, beta)\n"
                         "  local ok3 = pcall(rawset, beta, 'x', 1)\n"
                         "  local ok4 = pcall(beta.has, {}, 'alice')\n"
                         "  return (not ok1 and not ok2 and not ok3 and not ok4 and getmetatable(beta) == false\n"
                         "    and #beta == 1 and beta:size() == 1 and beta:get('alice') == true) and 'on' or 'off' end }\n";
    rs_state *C = load_state(writes, "beta.txt", "alice\n", NULL);
    check(C && rs_diagnostic_count(C) == 0, "the read-only probe loads");
    for (size_t i = 0; C && i < rs_diagnostic_count(C); i++)
        fprintf(stderr, "  %s:%d: %s\n", rs_diagnostic_at(C, i).file, rs_diagnostic_at(C, i).line,
                rs_diagnostic_at(C, i).message);
    if (C) check(variant(C, "{}") == 1, "a data object cannot be written, nor its metatable reached");
    rs_state_free(C);

    const char *map = "local m = data 'lists/regions'\n"
                      "flag 'f' { variants = { a = 1, b = 2, c = 3 }, default = 'a', rule = function(ctx)\n"
                      "  if m:get('eu') == 'fra' and m:get('n') == 3 and m:get('nope') == nil then return 'c' end\n"
                      "  return 'b' end }\n";
    rs_state *M = load_state(map, "lists/regions.json", "{\"eu\": \"fra\", \"n\": 3}", NULL);
    check(M && rs_diagnostic_count(M) == 0 && variant(M, "{}") == 2, "a map answers get with its values");
    rs_state_free(M);

    rs_state *E = load_state(rule, "beta.txt", "ok\n\nbad\xff\n", NULL);
    int found = 0;
    for (size_t i = 0; E && i < rs_diagnostic_count(E); i++) {
        rs_diagnostic d = rs_diagnostic_at(E, i);
        if (strcmp(d.file, "beta.txt") == 0 && d.line == 3) found = 1;
    }
    check(found, "a malformed data file fails loading at its file:line");
    rs_state_free(E);

    const char *late = "flag 'f' { rule = function(ctx) return data('beta'):has('a') and 'on' or 'off' end }\n";
    rs_state *L = load_state(late, "beta.txt", "a\n", NULL);
    check(L && rs_diagnostic_count(L) == 0 && variant(L, "{}") == -1 - RS_ERR_GENERAL,
          "data() is refused while a rule is evaluated");
    rs_state_free(L);
}

int main(void) {
    test_text_lists();
    test_large_list();
    test_json();
    test_in_state();
    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
