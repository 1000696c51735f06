/*
 * rs_dispatch.c - routing without calling into Lua for the common match shapes.
 *
 * Routing tries the routes in priority order and calls each route's `match` function until one accepts the
 * request: with 50 routes that is 50 calls from C into Lua, each reading fields through the request's read-only
 * proxy and looking up `starts_with` through two environments, about 100 ns a route. Most match functions are
 * tests of the request's top-level fields against constants:
 *
 *     match = function(req) return req.method == "GET" and starts_with(req.path, "/svc1/") end
 *
 * When the rule set is complete, the source text of every match function is read again (the state keeps each
 * route file's text until then) and, when the whole function is such a test, compiled into a small predicate
 * that C evaluates against the request's fields. Anything else (another statement, a number, a helper other
 * than starts_with/ends_with, a global that a file redefined, a function whose text cannot be told apart from a
 * neighbour's) keeps calling the Lua function, so routing picks exactly the route it picked before: the
 * predicates implement Lua's semantics for the subset they accept, and that subset cannot raise errors.
 *
 * What compiled routes do not do is charge the evaluation budget: they run a bounded amount of C per route.
 * Explaining a route (rs_explain_route) calls every match function, so traces show every line as before.
 */
#define _GNU_SOURCE
#include "rs_state.h"

#include <stdlib.h>
#include <string.h>

/* ---- the compiled form ----------------------------------------------------------------------------------------- */

enum pred_op {
    P_CONST,  /* `value` */
    P_TRUTHY, /* the field is present and not false */
    P_EQ_STR, /* the field is a string equal to the literal (`value` 0: ~=) */
    P_EQ_NIL, /* the field is absent (`value` 0: ~= nil) */
    P_EQ_BOOL, /* the field is the boolean `boolean` (`value` 0: ~=) */
    P_PREFIX, /* the field is a string starting with the literal */
    P_SUFFIX, /* the field is a string ending with the literal */
    P_AND,
    P_OR,
    P_NOT,
};

typedef struct rs_pred {
    uint8_t op;
    uint8_t value;
    uint8_t boolean;
    uint32_t field;
    int32_t a, b;            /* operands of P_AND, P_OR, P_NOT */
    uint32_t lit, lit_len;   /* literal: offset into the pool */
} rs_pred;

typedef struct rs_field_value {
    uint32_t generation; /* the request it was read for */
    int type;
    const char *s;
    size_t len;
    int boolean;
} rs_field_value;

typedef struct rs_source {
    char *path;
    char *text;
    size_t len;
} rs_source;

struct rs_dispatch {
    /* Route files' texts, kept from loading until the routes are compiled. */
    rs_source *sources;
    size_t source_count, source_cap;

    rs_pred *preds;
    size_t pred_count, pred_cap;
    char *pool;
    size_t pool_len, pool_cap;
    /* Field names: C copies (to share entries), and a registry table of the same names as Lua strings. */
    char **field_names;
    size_t field_count, field_cap;
    int field_keys_ref;
    /* Per-request cache of the fields read; `generation` tells a stale entry from a fresh one. */
    rs_field_value *values;
    uint32_t generation;
    size_t compiled_routes;
    bool disabled;
};

static void *grow(void *p, size_t *cap, size_t need, size_t size) {
    if (need <= *cap) return p;
    size_t cap2 = *cap ? *cap * 2 : 16;
    while (cap2 < need) cap2 *= 2;
    void *q = realloc(p, cap2 * size);
    if (q == NULL) abort();
    *cap = cap2;
    return q;
}

static rs_dispatch *dispatch_of(rs_state *S) {
    if (S->dispatch == NULL) {
        S->dispatch = calloc(1, sizeof *S->dispatch);
        if (S->dispatch == NULL) abort();
        S->dispatch->field_keys_ref = LUA_NOREF;
    }
    return S->dispatch;
}

static void drop_sources(rs_dispatch *D) {
    for (size_t i = 0; i < D->source_count; i++) {
        free(D->sources[i].path);
        free(D->sources[i].text);
    }
    free(D->sources);
    D->sources = NULL;
    D->source_count = D->source_cap = 0;
}

void rs_dispatch_free(rs_state *S) {
    rs_dispatch *D = S->dispatch;
    if (D == NULL) return;
    drop_sources(D);
    free(D->preds);
    free(D->pool);
    for (size_t i = 0; i < D->field_count; i++) free(D->field_names[i]);
    free(D->field_names);
    free(D->values);
    free(D);
    S->dispatch = NULL;
}

void rs_dispatch_keep_source(rs_state *S, const char *path, const char *text, size_t len) {
    /* Only a file that can declare a route is worth keeping. */
    if (len < 5 || memmem(text, len, "route", 5) == NULL) return;
    rs_dispatch *D = dispatch_of(S);
    D->sources = grow(D->sources, &D->source_cap, D->source_count + 1, sizeof *D->sources);
    rs_source *s = &D->sources[D->source_count++];
    s->path = rs_strdup(path);
    s->text = malloc(len ? len : 1);
    if (s->text == NULL) abort();
    memcpy(s->text, text, len);
    s->len = len;
}

/* ---- a lexer for Lua 5.4 source text ------------------------------------------------------------------------- */

enum tok_kind { T_NAME, T_STRING, T_NUMBER, T_SYMBOL, T_EOF };

typedef struct token {
    uint8_t kind;
    bool escaped;     /* T_STRING: has a backslash or is a long string, so its text is not its value */
    int32_t line;
    const char *s;    /* T_NAME, T_SYMBOL: the text; T_STRING: the contents */
    uint32_t len;
} token;

typedef struct lexer {
    const char *p, *end;
    int32_t line;
    token *toks;
    size_t count, cap;
} lexer;

static bool is_newline(char c) { return c == '\n' || c == '\r'; }

/* Lua counts "\n", "\r", "\r\n" and "\n\r" as one line break each. */
static void newline(lexer *x) {
    char c = *x->p++;
    if (x->p < x->end && is_newline(*x->p) && *x->p != c) x->p++;
    x->line++;
}

/* At '[': the level of a long bracket "[==[", or -1 when it is not one. */
static int long_bracket_level(const lexer *x) {
    const char *q = x->p + 1;
    int level = 0;
    while (q < x->end && *q == '=') q++, level++;
    return q < x->end && *q == '[' ? level : -1;
}

/* Skips a long bracket of `level` (p at its first '['); false when it does not end. */
static bool skip_long(lexer *x, int level) {
    x->p += level + 2;
    while (x->p < x->end) {
        if (*x->p == ']') {
            const char *q = x->p + 1;
            int l = 0;
            while (q < x->end && *q == '=') q++, l++;
            if (l == level && q < x->end && *q == ']') {
                x->p = q + 1;
                return true;
            }
            x->p++;
        } else if (is_newline(*x->p)) {
            newline(x);
        } else {
            x->p++;
        }
    }
    return false;
}

static void push(lexer *x, uint8_t kind, const char *s, size_t len, int32_t line, bool escaped) {
    x->toks = grow(x->toks, &x->cap, x->count + 1, sizeof *x->toks);
    token *t = &x->toks[x->count++];
    t->kind = kind;
    t->escaped = escaped;
    t->line = line;
    t->s = s;
    t->len = (uint32_t)len;
}

static bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static bool is_digit(char c) { return c >= '0' && c <= '9'; }
static bool is_name_char(char c) { return is_name_start(c) || is_digit(c); }

/* Tokenises a whole file; false when the text is not understood (it compiled, so this is conservative). */
static bool lex(lexer *x) {
    while (x->p < x->end) {
        char c = *x->p;
        if (is_newline(c)) {
            newline(x);
        } else if (c == ' ' || c == '\t' || c == '\v' || c == '\f') {
            x->p++;
        } else if (c == '-' && x->p + 1 < x->end && x->p[1] == '-') {
            x->p += 2;
            int level = x->p < x->end && *x->p == '[' ? long_bracket_level(x) : -1;
            if (level >= 0) {
                if (!skip_long(x, level)) return false;
            } else {
                while (x->p < x->end && !is_newline(*x->p)) x->p++;
            }
        } else if (c == '[' && long_bracket_level(x) >= 0) {
            int32_t line = x->line;
            const char *start = x->p;
            if (!skip_long(x, long_bracket_level(x))) return false;
            push(x, T_STRING, start, (size_t)(x->p - start), line, true);
        } else if (c == '"' || c == '\'') {
            int32_t line = x->line;
            const char *start = ++x->p;
            bool escaped = false;
            for (;;) {
                if (x->p >= x->end) return false;
                char d = *x->p;
                if (d == c) break;
                if (d == '\\') {
                    escaped = true;
                    x->p++;
                    if (x->p >= x->end) return false;
                    if (is_newline(*x->p)) newline(x);
                    else x->p++;
                } else if (is_newline(d)) {
                    newline(x); /* only after \z, in text that compiled */
                } else {
                    x->p++;
                }
            }
            push(x, T_STRING, start, (size_t)(x->p - start), line, escaped);
            x->p++;
        } else if (is_name_start(c)) {
            const char *start = x->p;
            while (x->p < x->end && is_name_char(*x->p)) x->p++;
            push(x, T_NAME, start, (size_t)(x->p - start), x->line, false);
        } else if (is_digit(c) || (c == '.' && x->p + 1 < x->end && is_digit(x->p[1]))) {
            const char *start = x->p;
            while (x->p < x->end) {
                char d = *x->p;
                if ((d == '+' || d == '-') && strchr("eEpP", x->p[-1]) != NULL) x->p++;
                else if (is_name_char(d) || d == '.') x->p++;
                else break;
            }
            push(x, T_NUMBER, start, (size_t)(x->p - start), x->line, false);
        } else {
            static const char *const multi[] = {"...", "==", "~=", "<=", ">=", "//", "::", "<<", ">>", "..", NULL};
            size_t len = 1;
            for (const char *const *m = multi; *m; m++) {
                size_t n = strlen(*m);
                if ((size_t)(x->end - x->p) >= n && memcmp(x->p, *m, n) == 0) {
                    len = n;
                    break;
                }
            }
            push(x, T_SYMBOL, x->p, len, x->line, false);
            x->p += len;
        }
    }
    push(x, T_EOF, x->end, 0, x->line, false);
    return true;
}

/* ---- the parser of match functions ---------------------------------------------------------------------------- */

#define MAX_ALIASES 8
#define MAX_NESTING 32

typedef struct parser {
    rs_state *S;
    lua_State *L;
    rs_dispatch *D;
    const token *t;
    const token *param; /* NULL: the function takes no parameter */
    struct {
        const token *name;
        uint32_t field;
    } aliases[MAX_ALIASES];
    int alias_count;
    int depth;
    bool failed;
} parser;

static bool is(const token *t, uint8_t kind, const char *text) {
    size_t n = strlen(text);
    return t->kind == kind && t->len == n && memcmp(t->s, text, n) == 0;
}

static bool same_text(const token *a, const token *b) {
    return a->len == b->len && memcmp(a->s, b->s, a->len) == 0;
}

static bool is_keyword(const token *t) {
    static const char *const words[] = {"and",  "break", "do",    "else", "elseif", "end",   "false", "for",
                                        "function", "goto", "if", "in", "local", "nil",   "not",   "or",
                                        "repeat", "return", "then", "true", "until", "while", NULL};
    if (t->kind != T_NAME) return false;
    for (const char *const *w = words; *w; w++)
        if (is(t, T_NAME, *w)) return true;
    return false;
}

static bool accept(parser *P, uint8_t kind, const char *text) {
    if (!is(P->t, kind, text)) return false;
    P->t++;
    return true;
}

static void expect(parser *P, uint8_t kind, const char *text) {
    if (!accept(P, kind, text)) P->failed = true;
}

static int32_t add_pred(parser *P, rs_pred pred) {
    rs_dispatch *D = P->D;
    D->preds = grow(D->preds, &D->pred_cap, D->pred_count + 1, sizeof *D->preds);
    D->preds[D->pred_count] = pred;
    return (int32_t)D->pred_count++;
}

static uint32_t add_literal(parser *P, const token *t) {
    rs_dispatch *D = P->D;
    D->pool = grow(D->pool, &D->pool_cap, D->pool_len + t->len + 1, 1);
    memcpy(D->pool + D->pool_len, t->s, t->len);
    uint32_t at = (uint32_t)D->pool_len;
    D->pool_len += t->len;
    return at;
}

static uint32_t field_index(parser *P, const char *name, size_t len) {
    rs_dispatch *D = P->D;
    for (size_t i = 0; i < D->field_count; i++)
        if (strlen(D->field_names[i]) == len && memcmp(D->field_names[i], name, len) == 0) return (uint32_t)i;
    if (memchr(name, 0, len) != NULL) {
        P->failed = true;
        return 0;
    }
    D->field_names = grow(D->field_names, &D->field_cap, D->field_count + 1, sizeof *D->field_names);
    D->field_names[D->field_count] = rs_strndup(name, len);
    return (uint32_t)D->field_count++;
}

/* The operands `==` and `~=` may compare, and the truth values of everything. */
enum operand_kind { O_NONE, O_FIELD, O_STRING, O_NIL, O_BOOL, O_PRED };

typedef struct operand {
    int kind;
    uint32_t field;
    const token *lit;
    bool boolean;
    int32_t pred;
} operand;

static int32_t expression(parser *P);

/* req.name, req["name"], or a local alias of one; false when the tokens are something else. */
static bool field_ref(parser *P, uint32_t *field) {
    const token *t = P->t;
    if (t->kind != T_NAME || is_keyword(t)) return false;
    if (P->param != NULL && same_text(t, P->param)) {
        if (is(t + 1, T_SYMBOL, ".") && t[2].kind == T_NAME && !is_keyword(&t[2])) {
            *field = field_index(P, t[2].s, t[2].len);
            P->t += 3;
            return true;
        }
        if (is(t + 1, T_SYMBOL, "[") && t[2].kind == T_STRING && !t[2].escaped && is(t + 3, T_SYMBOL, "]")) {
            *field = field_index(P, t[2].s, t[2].len);
            P->t += 4;
            return true;
        }
        return false;
    }
    for (int i = 0; i < P->alias_count; i++) {
        if (same_text(t, P->aliases[i].name)) {
            *field = P->aliases[i].field;
            P->t++;
            return true;
        }
    }
    return false;
}

/* starts_with and ends_with, when the name reaches the sandbox's own helper (checked by the caller's resolution
 * of every global the function uses). */
static bool affix_call(parser *P, operand *o) {
    const token *t = P->t;
    bool prefix = is(t, T_NAME, "starts_with"), suffix = is(t, T_NAME, "ends_with");
    if (!(prefix || suffix) || !is(t + 1, T_SYMBOL, "(")) return false;
    if (P->param != NULL && same_text(t, P->param)) return false;
    for (int i = 0; i < P->alias_count; i++)
        if (same_text(t, P->aliases[i].name)) return false;
    P->t += 2;
    uint32_t field = 0;
    if (!field_ref(P, &field) || !accept(P, T_SYMBOL, ",") || P->t->kind != T_STRING || P->t->escaped) {
        P->failed = true;
        return true;
    }
    const token *lit = P->t++;
    expect(P, T_SYMBOL, ")");
    rs_pred pred = {.op = prefix ? P_PREFIX : P_SUFFIX, .field = field, .a = -1, .b = -1};
    pred.lit = add_literal(P, lit);
    pred.lit_len = lit->len;
    o->kind = O_PRED;
    o->pred = add_pred(P, pred);
    return true;
}

static void primary(parser *P, operand *o) {
    memset(o, 0, sizeof *o);
    const token *t = P->t;
    if (accept(P, T_NAME, "true") || accept(P, T_NAME, "false")) {
        o->kind = O_BOOL;
        o->boolean = is(t, T_NAME, "true");
    } else if (accept(P, T_NAME, "nil")) {
        o->kind = O_NIL;
    } else if (t->kind == T_STRING && !t->escaped) {
        P->t++;
        o->kind = O_STRING;
        o->lit = t;
    } else if (accept(P, T_SYMBOL, "(")) {
        o->kind = O_PRED;
        o->pred = expression(P);
        expect(P, T_SYMBOL, ")");
    } else if (affix_call(P, o)) {
        /* done */
    } else if (field_ref(P, &o->field)) {
        o->kind = O_FIELD;
    } else {
        P->failed = true;
    }
}

/* The truth value of an operand as a predicate. */
static int32_t truth(parser *P, const operand *o) {
    rs_pred pred = {.op = P_CONST, .a = -1, .b = -1};
    switch (o->kind) {
    case O_PRED: return o->pred;
    case O_FIELD: pred.op = P_TRUTHY, pred.field = o->field; break;
    case O_STRING: pred.value = 1; break;
    case O_BOOL: pred.value = o->boolean; break;
    default: pred.value = 0; break;
    }
    return add_pred(P, pred);
}

/* `a == b` (or `~=`, with equal = false) for operands that are fields or constants. */
static int32_t comparison(parser *P, const operand *x, const operand *y, bool equal) {
    rs_pred pred = {.op = P_CONST, .a = -1, .b = -1};
    if (x->kind == O_PRED || y->kind == O_PRED || (x->kind == O_FIELD && y->kind == O_FIELD)) {
        P->failed = true;
        return -1;
    }
    if (x->kind != O_FIELD && y->kind != O_FIELD) {
        /* Two constants: fold. */
        bool same = x->kind == y->kind &&
                    (x->kind == O_NIL || (x->kind == O_BOOL && x->boolean == y->boolean) ||
                     (x->kind == O_STRING && same_text(x->lit, y->lit)));
        pred.value = same == equal;
        return add_pred(P, pred);
    }
    const operand *f = x->kind == O_FIELD ? x : y, *k = x->kind == O_FIELD ? y : x;
    pred.field = f->field;
    pred.value = equal;
    if (k->kind == O_STRING) {
        pred.op = P_EQ_STR;
        pred.lit = add_literal(P, k->lit);
        pred.lit_len = k->lit->len;
    } else if (k->kind == O_NIL) {
        pred.op = P_EQ_NIL;
    } else {
        pred.op = P_EQ_BOOL;
        pred.boolean = k->boolean;
    }
    return add_pred(P, pred);
}

/* Lua's precedence: or < and < comparison < not. */
static int32_t unary(parser *P, operand *o) {
    if (accept(P, T_NAME, "not")) {
        operand inner;
        int32_t a = unary(P, &inner);
        if (P->failed) return -1;
        rs_pred pred = {.op = P_NOT, .a = a, .b = -1};
        o->kind = O_PRED;
        o->pred = add_pred(P, pred);
        return o->pred;
    }
    primary(P, o);
    return P->failed ? -1 : truth(P, o);
}

static int32_t compare_level(parser *P) {
    operand x;
    int32_t value = unary(P, &x);
    if (P->failed) return -1;
    bool eq = is(P->t, T_SYMBOL, "=="), ne = is(P->t, T_SYMBOL, "~=");
    if (!eq && !ne) return value;
    P->t++;
    operand y;
    memset(&y, 0, sizeof y);
    if (is(P->t, T_NAME, "not")) {
        P->failed = true;
        return -1;
    }
    primary(P, &y);
    if (P->failed) return -1;
    return comparison(P, &x, &y, eq);
}

static int32_t and_level(parser *P) {
    int32_t value = compare_level(P);
    while (!P->failed && accept(P, T_NAME, "and")) {
        int32_t right = compare_level(P);
        rs_pred pred = {.op = P_AND, .a = value, .b = right};
        value = add_pred(P, pred);
    }
    return value;
}

static int32_t expression(parser *P) {
    if (++P->depth > MAX_NESTING) {
        P->failed = true;
        return -1;
    }
    int32_t value = and_level(P);
    while (!P->failed && accept(P, T_NAME, "or")) {
        int32_t right = and_level(P);
        rs_pred pred = {.op = P_OR, .a = value, .b = right};
        value = add_pred(P, pred);
    }
    P->depth--;
    return value;
}

/* function ( [param] ) { local name = param.field } return expression end */
static int32_t function_body(parser *P) {
    expect(P, T_SYMBOL, "(");
    if (P->t->kind == T_NAME && !is_keyword(P->t)) P->param = P->t++;
    expect(P, T_SYMBOL, ")");
    while (!P->failed && accept(P, T_NAME, "local")) {
        const token *name = P->t++;
        if (name->kind != T_NAME || is_keyword(name) || P->alias_count == MAX_ALIASES ||
            (P->param && same_text(name, P->param)) || is(name, T_NAME, "starts_with") ||
            is(name, T_NAME, "ends_with")) {
            P->failed = true;
            break;
        }
        for (int i = 0; i < P->alias_count; i++)
            if (same_text(name, P->aliases[i].name)) P->failed = true;
        expect(P, T_SYMBOL, "=");
        uint32_t field = 0;
        if (P->failed || !field_ref(P, &field)) {
            P->failed = true;
            break;
        }
        /* The alias is visible only after its statement, as in Lua. */
        P->aliases[P->alias_count].name = name;
        P->aliases[P->alias_count].field = field;
        P->alias_count++;
        accept(P, T_SYMBOL, ";");
    }
    expect(P, T_NAME, "return");
    if (P->failed) return -1;
    int32_t value = expression(P);
    accept(P, T_SYMBOL, ";");
    expect(P, T_NAME, "end");
    return P->failed ? -1 : value;
}

/* ---- matching a function to its text -------------------------------------------------------------------------- */

/* Pushes what the global `name` is for the environment at `env`, following only tables (frozen proxies, their
 * storage, __index tables): false when a function stands in the way (it would run user code) or the chain is
 * too long to be a sandbox environment. */
static bool resolve_global(lua_State *L, int env, const char *name) {
    lua_pushvalue(L, env);
    for (int hops = 0; hops < 16; hops++) {
        if (lua_type(L, -1) != LUA_TTABLE) {
            lua_pop(L, 1);
            return false;
        }
        lua_pushstring(L, name);
        if (lua_rawget(L, -2) != LUA_TNIL) {
            lua_remove(L, -2);
            return true;
        }
        lua_pop(L, 1);
        if (!lua_getmetatable(L, -1)) {
            lua_pop(L, 1);
            lua_pushnil(L);
            return true;
        }
        lua_pushliteral(L, "__index");
        lua_rawget(L, -2);
        lua_remove(L, -2); /* the metatable */
        lua_remove(L, -2); /* the table */
        if (lua_isnil(L, -1)) return true;
    }
    lua_pop(L, 1);
    return false;
}

/* Whether the names starts_with and ends_with, as the function at `fn` sees them, are the sandbox's helpers:
 * its only upvalue may be _ENV, and that environment must reach the base's own helpers. */
static bool helpers_are_builtin(lua_State *L, int fn) {
    const char *up = lua_getupvalue(L, fn, 1);
    if (up == NULL) return true; /* no globals used at all */
    int env = lua_gettop(L);
    bool ok = strcmp(up, "_ENV") == 0 && lua_getupvalue(L, fn, 2) == NULL;
    static const char *const names[] = {"starts_with", "ends_with"};
    for (int i = 0; ok && i < 2; i++) {
        lua_rawgetp(L, LUA_REGISTRYINDEX, &rs_key_base);
        int base = lua_gettop(L);
        if (!resolve_global(L, base, names[i])) {
            lua_pop(L, 1);
            ok = false;
            break;
        }
        if (!resolve_global(L, env, names[i])) {
            lua_pop(L, 2);
            ok = false;
            break;
        }
        ok = lua_tocfunction(L, -1) != NULL && lua_rawequal(L, -1, -2);
        lua_pop(L, 3);
    }
    lua_settop(L, env - 1);
    return ok;
}

/* Finds the function's text among the tokens: the one `function` keyword on the lines it spans, which must be on
 * its first line (Lua's linedefined is the line of the token after `function`, so a `function` keyword alone at
 * the end of the previous line would name a different function here). Returns the token after it. */
static const token *function_start(const lexer *x, int32_t first, int32_t last) {
    size_t lo = 0, hi = x->count;
    while (lo < hi) { /* the first token on or after line `first` */
        size_t mid = lo + (hi - lo) / 2;
        if (x->toks[mid].line < first) lo = mid + 1;
        else hi = mid;
    }
    if (lo > 0 && is(&x->toks[lo - 1], T_NAME, "function")) return NULL;
    const token *found = NULL;
    for (size_t i = lo; i < x->count; i++) {
        const token *t = &x->toks[i];
        if (t->line > last) break;
        if (is(t, T_NAME, "function")) {
            if (found != NULL) return NULL;
            found = t;
        }
    }
    if (found == NULL || found->line != first || found[1].line != first) return NULL;
    return found + 1;
}

static int32_t compile_match(rs_state *S, lua_State *L, rs_dispatch *D, const lexer *x, int fn) {
    lua_Debug ar;
    lua_pushvalue(L, fn);
    if (!lua_getinfo(L, ">Su", &ar) || ar.what == NULL || strcmp(ar.what, "Lua") != 0 || ar.isvararg ||
        ar.nparams > 1 || ar.linedefined <= 0 || ar.lastlinedefined < ar.linedefined)
        return -1;
    if (!helpers_are_builtin(L, fn)) return -1;
    const token *start = function_start(x, ar.linedefined, ar.lastlinedefined);
    if (start == NULL) return -1;
    size_t preds = D->pred_count, pool = D->pool_len, fields = D->field_count;
    parser P = {.S = S, .L = L, .D = D, .t = start};
    int32_t root = function_body(&P);
    /* The text must end where Lua says the function ends, and take as many parameters. */
    bool ok = !P.failed && root >= 0 && P.t[-1].line == ar.lastlinedefined && (P.param != NULL) == (ar.nparams == 1);
    if (ok) return root;
    D->pred_count = preds;
    D->pool_len = pool;
    while (D->field_count > fields) free(D->field_names[--D->field_count]);
    return -1;
}

static int source_cmp(const void *a, const void *b) {
    return strcmp(((const rs_source *)a)->path, ((const rs_source *)b)->path);
}

typedef struct route_ref {
    const char *file;
    size_t index;
} route_ref;

static int route_ref_cmp(const void *a, const void *b) {
    const route_ref *x = a, *y = b;
    int c = strcmp(x->file, y->file);
    return c ? c : (x->index > y->index) - (x->index < y->index);
}

/* Compiles every route's match function that has a compilable shape; runs once the rule set is complete and
 * frozen (so the globals a function sees can no longer change), before the routes' texts are dropped. */
void rs_dispatch_compile(rs_state *S, lua_State *L) {
    rs_dispatch *D = S->dispatch;
    for (size_t i = 0; i < S->route_count; i++) S->routes[i].match_pred = -1;
    if (D == NULL) return;
    int top = lua_gettop(L);
    /* Routes grouped by file, so that each file is lexed once. */
    route_ref *refs = calloc(S->route_count ? S->route_count : 1, sizeof *refs);
    if (refs == NULL) abort();
    size_t n = 0;
    for (size_t i = 0; i < S->route_count; i++)
        if (S->routes[i].match_ref != LUA_NOREF) refs[n++] = (route_ref){S->routes[i].file, i};
    qsort(refs, n, sizeof *refs, route_ref_cmp);
    qsort(D->sources, D->source_count, sizeof *D->sources, source_cmp);
    for (size_t i = 0; i < n;) {
        size_t end = i;
        while (end < n && strcmp(refs[end].file, refs[i].file) == 0) end++;
        rs_source key = {(char *)refs[i].file, NULL, 0};
        const rs_source *src = bsearch(&key, D->sources, D->source_count, sizeof *D->sources, source_cmp);
        lexer x = {NULL, NULL, 1, NULL, 0, 0};
        if (src != NULL) {
            x.p = src->text;
            x.end = src->text + src->len;
        }
        if (src != NULL && lex(&x)) {
            char chunkname[4200];
            snprintf(chunkname, sizeof chunkname, "@%s", refs[i].file);
            for (size_t j = i; j < end; j++) {
                rs_route_entry *e = &S->routes[refs[j].index];
                lua_rawgeti(L, LUA_REGISTRYINDEX, e->match_ref);
                int fn = lua_gettop(L);
                lua_Debug ar;
                lua_pushvalue(L, fn);
                if (lua_getinfo(L, ">S", &ar) && strcmp(ar.source, chunkname) == 0)
                    e->match_pred = compile_match(S, L, D, &x, fn);
                if (e->match_pred >= 0) D->compiled_routes++;
                lua_settop(L, top);
            }
        }
        free(x.toks);
        i = end;
    }
    free(refs);
    drop_sources(D);
    if (D->field_count > 0) {
        lua_createtable(L, (int)D->field_count, 0);
        for (size_t f = 0; f < D->field_count; f++) {
            lua_pushstring(L, D->field_names[f]);
            lua_rawseti(L, -2, (lua_Integer)f + 1);
        }
        D->field_keys_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        D->values = calloc(D->field_count, sizeof *D->values);
        if (D->values == NULL) abort();
    }
    lua_settop(L, top);
}

/* ---- evaluation ------------------------------------------------------------------------------------------------ */

void rs_dispatch_begin(rs_state *S) {
    rs_dispatch *D = S->dispatch;
    if (D == NULL) return;
    if (++D->generation == 0) {
        /* Wrapped: forget every cached entry rather than mistake an old one for fresh. */
        for (size_t i = 0; i < D->field_count; i++) D->values[i].generation = 0;
        D->generation = 1;
    }
}

static const rs_field_value *field(rs_dispatch *D, lua_State *L, int storage, uint32_t f) {
    rs_field_value *v = &D->values[f];
    if (v->generation == D->generation) return v;
    v->generation = D->generation;
    lua_rawgeti(L, LUA_REGISTRYINDEX, D->field_keys_ref);
    lua_rawgeti(L, -1, (lua_Integer)f + 1);
    v->type = rs_context_rawget(L, storage);
    v->s = NULL;
    v->len = 0;
    v->boolean = 0;
    /* The string stays alive while the request's storage (on the stack) holds it. */
    if (v->type == LUA_TSTRING) v->s = lua_tolstring(L, -1, &v->len);
    else if (v->type == LUA_TBOOLEAN) v->boolean = lua_toboolean(L, -1);
    lua_pop(L, 2);
    return v;
}

static bool eval_pred(rs_dispatch *D, lua_State *L, int storage, int32_t index) {
    const rs_pred *p = &D->preds[index];
    switch (p->op) {
    case P_CONST: return p->value;
    case P_AND: return eval_pred(D, L, storage, p->a) && eval_pred(D, L, storage, p->b);
    case P_OR: return eval_pred(D, L, storage, p->a) || eval_pred(D, L, storage, p->b);
    case P_NOT: return !eval_pred(D, L, storage, p->a);
    default: break;
    }
    const rs_field_value *v = field(D, L, storage, p->field);
    const char *lit = D->pool + p->lit;
    switch (p->op) {
    case P_TRUTHY: return v->type != LUA_TNIL && !(v->type == LUA_TBOOLEAN && !v->boolean);
    case P_EQ_STR:
        return (v->type == LUA_TSTRING && v->len == p->lit_len && memcmp(v->s, lit, p->lit_len) == 0) == p->value;
    case P_EQ_NIL: return (v->type == LUA_TNIL) == p->value;
    case P_EQ_BOOL: return (v->type == LUA_TBOOLEAN && v->boolean == p->boolean) == p->value;
    case P_PREFIX: return v->type == LUA_TSTRING && v->len >= p->lit_len && memcmp(v->s, lit, p->lit_len) == 0;
    case P_SUFFIX:
        return v->type == LUA_TSTRING && v->len >= p->lit_len &&
               memcmp(v->s + (v->len - p->lit_len), lit, p->lit_len) == 0;
    default: return false;
    }
}

bool rs_dispatch_match(rs_state *S, lua_State *L, int storage, int32_t pred) {
    return eval_pred(S->dispatch, L, storage, pred);
}

bool rs_dispatch_usable(const rs_state *S) {
    return S->dispatch != NULL && S->dispatch->compiled_routes > 0 && !S->dispatch->disabled;
}

void rs_set_compiled_routing(rs_state *S, int enabled) {
    if (S->dispatch != NULL) S->dispatch->disabled = !enabled;
}

int rs_route_match_compiled(const rs_state *S, size_t index) {
    return S->usable && index < S->route_count && S->routes[index].match_pred >= 0;
}
