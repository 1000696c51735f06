// sources: rs_data.c rs_dispatch.c rs_env.c rs_freeze.c rs_helpers.c rs_json.c rs_pattern.c rs_rules.c rs_state.c rs_tests.c rs_thread.c rs_trace.c
/*
 * model_strings_test.c - the keys, names, descriptions and files the sandbox keeps for the model, which live in the
 * state's string arena: every one reads back as written, across many arena blocks, a description longer than a
 * block, variants, routes and configs, in states built and freed one after another (AddressSanitizer and
 * LeakSanitizer find an overrun, a string freed alone or a block never freed).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rs_state.h"

#include "check.h"

#define FILES 3
#define FLAGS_PER_FILE 400
#define LONG_DESCRIPTION 20000

static char *file_text(int file)
{
    size_t cap = 1 << 20, len = 0;
    char *text = malloc(cap);
    for (int i = 0; i < FLAGS_PER_FILE; i++) {
        int flag = file * FLAGS_PER_FILE + i;
        len += (size_t)snprintf(text + len, cap - len,
                                "flag \"f%d.flag-%d\" { description = \"the description of flag %d\",%s"
                                " rule = function(ctx) return \"on\" end }\n",
                                file, flag, flag,
                                flag % 3 == 0 ? " variants = { red = 1, green = 2, blue = 3 }, default = \"red\"," : "");
    }
    text[len] = '\0';
    return text;
}

static void build_and_read(int round)
{
    char error[256];
    rs_state *S = rs_state_new(NULL, error, sizeof error);
    check(S != NULL, "state created");
    if (S == NULL) return;
    char path[32];
    for (int file = 0; file < FILES; file++) {
        char *text = file_text(file);
        snprintf(path, sizeof path, "team%d.lua", file);
        check(rs_load_file(S, path, text, strlen(text)) == 0, "file loads");
        free(text);
    }
    char *longer = malloc(LONG_DESCRIPTION + 200);
    int n = snprintf(longer, 200, "flag \"long\" { description = \"");
    memset(longer + n, 'd', LONG_DESCRIPTION);
    snprintf(longer + n + LONG_DESCRIPTION, 200,
             "\" }\nroute \"r\" { description = \"the route\", target = \"t\" }\nconfig \"c\" (1)\n");
    check(rs_load_file(S, "long.lua", longer, strlen(longer)) == 0, "long file loads");
    free(longer);
    check(rs_finish_loading(S) == 0, "rule set finishes loading");

    check(rs_flag_count(S) == FILES * FLAGS_PER_FILE + 1, "every flag is there");
    char expected[64];
    int mismatches = 0;
    for (size_t i = 0; i < rs_flag_count(S); i++) {
        rs_flag_info f = rs_flag_at(S, i);
        if (strcmp(f.key, "long") == 0) {
            check(strlen(f.description) == LONG_DESCRIPTION && f.description[LONG_DESCRIPTION - 1] == 'd',
                  "a description longer than an arena block");
            check(strcmp(f.file, "long.lua") == 0, "the long flag's file");
            continue;
        }
        int file = -1, flag = -1;
        if (sscanf(f.key, "f%d.flag-%d", &file, &flag) != 2) {
            mismatches++;
            continue;
        }
        snprintf(expected, sizeof expected, "the description of flag %d", flag);
        if (strcmp(f.description, expected) != 0) mismatches++;
        snprintf(expected, sizeof expected, "team%d.lua", file);
        if (strcmp(f.file, expected) != 0) mismatches++;
        if (flag % 3 == 0) {
            if (f.variant_count != 3) mismatches++;
            int colours = 0;
            for (int v = 0; v < f.variant_count; v++) {
                const char *name = rs_flag_variant_at(S, i, (size_t)v).name;
                colours += strcmp(name, "red") == 0 || strcmp(name, "green") == 0 || strcmp(name, "blue") == 0;
            }
            if (colours != 3) mismatches++;
        }
    }
    check(mismatches == 0, "every key, description, file and variant name reads back as written");
    check(rs_route_count(S) == 1 && strcmp(rs_route_at(S, 0).name, "r") == 0 &&
              strcmp(rs_route_at(S, 0).description, "the route") == 0 && strcmp(rs_route_at(S, 0).file, "long.lua") == 0,
          "the route's name, description and file");
    check(rs_config_count(S) == 1 && strcmp(rs_config_at(S, 0).key, "c") == 0 &&
              strcmp(rs_config_at(S, 0).file, "long.lua") == 0,
          "the config's key and file");
    if (round == 0) fprintf(stderr, "strings: %zu flags read back\n", rs_flag_count(S));
    rs_state_free(S);
}

int main(void)
{
    for (int round = 0; round < 3; round++) build_and_read(round);
    if (failures) {
        fprintf(stderr, "%d of %d checks failed\n", failures, checks);
        return 1;
    }
    fprintf(stderr, "all %d model string checks passed\n", checks);
    return 0;
}
