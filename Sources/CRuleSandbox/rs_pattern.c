/*
 * rs_pattern.c - Lua 5.4 pattern matching with a step budget.
 *
 * The stock string.find/match/gmatch/gsub run their matcher in C, where the
 * count hook that enforces the sandbox budget never fires, and Lua patterns
 * backtrack: ("a*"):rep(24) .. "b" against thirty 'a's takes longer than anyone
 * is willing to wait. This file is a separate implementation of the same
 * pattern language whose every unit of work is charged to the sandbox budget
 * through rs_charge(), so a hostile pattern ends with a resource-limit error
 * instead of a stuck daemon.
 *
 * Compatibility is the other half of the contract: rule authors write against
 * the Lua 5.4 reference manual (section 6.4.1), so results, argument handling
 * and error messages follow stock Lua 5.4 exactly, including its limits (32
 * captures, 200 levels of matcher recursion) because those limits decide which
 * patterns fail with "pattern too complex" and which succeed.
 *
 * Memory discipline: rs_charge() and every Lua error longjmp out of here, so no
 * function holds malloc'd memory. Matcher state lives on the C stack, results
 * are built in luaL_Buffers (owned by the Lua stack), and the gmatch iterator
 * keeps its position in closure upvalues.
 */
#include "rs_internal.h"

#include <ctype.h>
#include <string.h>

/* Stock Lua's limits; they are part of the observable behaviour. */
#define PAT_MAX_CAPTURES 32 /* LUA_MAXCAPTURES in lstrlib.c */
#define PAT_MAX_DEPTH 200   /* MAXCCALLS in lstrlib.c: nested matcher calls */

/* Pending steps are handed to rs_charge() once they reach this many, so the
 * per-step cost of metering is an add and a compare. */
#define CHARGE_BATCH 1024

/* Bulk byte work (memchr scans, memcmp, copies) is charged one step for this
 * many bytes: it runs an order of magnitude faster than matcher steps. */
#define BYTES_PER_STEP 16

/* Walking a set ("[...]") or a %b run is a branchy byte loop, several times
 * slower than memchr: one step per this many bytes. Typical sets cost nothing
 * extra; a hostile megabyte-long set costs what it takes to walk. */
#define LOOP_BYTES_PER_STEP 4

/* memchr is run over windows of this size so a scan of a huge subject is
 * charged, and can be stopped, while it is under way. */
#define SCAN_WINDOW 65536

#define ESC '%'

/* Capture lengths that are not lengths. */
#define CAP_OPEN (-1)     /* '(' seen, matching ')' not yet */
#define CAP_POSITION (-2) /* '()' : captures the position, not text */

/* ----------------------------------------------------------------------------
 * Budget metering
 * ------------------------------------------------------------------------- */

typedef struct Meter {
    lua_State *L;
    uint64_t pending; /* steps done but not yet passed to rs_charge() */
} Meter;

static void meter_flush(Meter *mt) {
    if (mt->pending > 0) {
        uint64_t steps = mt->pending;
        mt->pending = 0; /* reset first: rs_charge() may not return */
        rs_charge(mt->L, steps);
    }
}

static inline void meter_add(Meter *mt, uint64_t steps) {
    mt->pending += steps;
    if (mt->pending >= CHARGE_BATCH)
        meter_flush(mt);
}

/* Cost of touching n bytes with memchr/memcmp/memcpy. */
static inline void meter_bytes(Meter *mt, size_t n) {
    meter_add(mt, 1 + n / BYTES_PER_STEP);
}

/* ----------------------------------------------------------------------------
 * Matcher state
 * ------------------------------------------------------------------------- */

typedef struct Capture {
    const char *start;
    ptrdiff_t len; /* byte length, CAP_OPEN or CAP_POSITION */
} Capture;

typedef struct Matcher {
    Meter meter;
    const char *src;     /* subject */
    const char *src_end; /* one past its last byte */
    const char *pat_end; /* one past the pattern's last byte */
    int depth_left;      /* matcher calls that may still nest */
    int ncap;            /* captures opened so far (open or closed) */
    Capture cap[PAT_MAX_CAPTURES];
} Matcher;

static void matcher_init(Matcher *m, lua_State *L, const char *s, size_t ls, const char *p, size_t lp) {
    m->meter.L = L;
    m->meter.pending = 0;
    m->src = s;
    m->src_end = s + ls;
    m->pat_end = p + lp;
    m->depth_left = PAT_MAX_DEPTH;
    m->ncap = 0;
}

/* Every match attempt starts from scratch: no captures, full depth allowance. */
static void matcher_restart(Matcher *m) {
    m->ncap = 0;
    m->depth_left = PAT_MAX_DEPTH;
}

/* Pattern errors go through here so the work done so far is charged even
 * though the call is about to unwind. Stock messages, verbatim. */
#define pattern_error(m, ...) (meter_flush(&(m)->meter), luaL_error((m)->meter.L, __VA_ARGS__))

static inline int uch(char c) {
    return (unsigned char)c;
}

/* ----------------------------------------------------------------------------
 * Single-character items: '.', %x, [set] or a literal byte
 * ------------------------------------------------------------------------- */

/* Does byte c belong to class letter cl (the character after '%')? Letters that
 * are not class names, and all non-letters, stand for themselves; that is what
 * makes "%." or "%%" escapes. An upper-case class letter means the complement.
 * %z (the NUL byte) is deprecated but stock 5.4 still accepts it, so do we.
 * The <ctype.h> predicates are used on purpose: stock Lua uses them too, so
 * both agree under whatever locale the process runs in. */
static int class_has(int c, int cl) {
    int in;
    switch (tolower(cl)) {
    case 'a': in = isalpha(c); break;
    case 'c': in = iscntrl(c); break;
    case 'd': in = isdigit(c); break;
    case 'g': in = isgraph(c); break;
    case 'l': in = islower(c); break;
    case 'p': in = ispunct(c); break;
    case 's': in = isspace(c); break;
    case 'u': in = isupper(c); break;
    case 'w': in = isalnum(c); break;
    case 'x': in = isxdigit(c); break;
    case 'z': in = (c == 0); break; /* deprecated since 5.2, still honoured by 5.4 */
    default: return cl == c;
    }
    return isupper(cl) ? !in : in != 0;
}

/* Does byte c belong to the set that opens at '[' (p) and closes at ']' (close)?
 * item_end() has already checked the syntax, so every '%' inside is followed by
 * a byte before `close`. A '-' makes a range only between two members and not
 * as the last member, so "[a-]" holds 'a' and '-'. */
static int set_has(int c, const char *p, const char *close) {
    int want = 1;
    if (p[1] == '^') {
        want = 0;
        p++;
    }
    for (p++; p < close; p++) {
        if (*p == ESC) {
            p++;
            if (class_has(c, uch(*p)))
                return want;
        } else if (p[1] == '-' && p + 2 < close) {
            if (uch(p[0]) <= c && c <= uch(p[2]))
                return want;
            p += 2;
        } else if (uch(*p) == c) {
            return want;
        }
    }
    return !want;
}

/* Returns the end of the single-character item starting at p (a quantifier, if
 * any, sits there). The first byte of a set is always a member, even ']', so
 * "[]]" is the set holding ']' and "[^]]" its complement. */
static const char *item_end(Matcher *m, const char *p) {
    const char *end = m->pat_end;
    char first = *p++;
    if (first == ESC) {
        if (p == end)
            pattern_error(m, "malformed pattern (ends with '%%')");
        return p + 1;
    }
    if (first == '[') {
        if (p < end && *p == '^')
            p++;
        const char *members = p;
        do {
            if (p == end)
                pattern_error(m, "malformed pattern (missing ']')");
            if (*p++ == ESC && p < end)
                p++; /* an escaped byte, "%]" included, never closes the set */
        } while (p == end || *p != ']');
        meter_add(&m->meter, (uint64_t)(p - members) / LOOP_BYTES_PER_STEP);
        return p + 1;
    }
    return p;
}

/* Does the item [p, ep) match the subject byte at s? There is no byte at the
 * end of the subject, so nothing matches there. One step. */
static int item_matches(Matcher *m, const char *s, const char *p, const char *ep) {
    meter_add(&m->meter, 1);
    if (s >= m->src_end)
        return 0;
    int c = uch(*s);
    switch (*p) {
    case '.': return 1;
    case ESC: return class_has(c, uch(p[1]));
    case '[':
        meter_add(&m->meter, (uint64_t)(ep - p) / LOOP_BYTES_PER_STEP);
        return set_has(c, p, ep - 1);
    default: return uch(*p) == c;
    }
}

/* ----------------------------------------------------------------------------
 * The backtracking matcher
 *
 * match() tries to match the pattern from p against the subject from s and
 * returns the end of the match or NULL. It recurses wherever stock Lua's does
 * (captures, quantifiers other than a plain single item, '?' that matched), so
 * it hits the depth limit for exactly the same patterns; straight-line items
 * loop instead of recursing. The depth limit bounds the C stack, the meter
 * bounds the time (backtracking can be exponential within that depth).
 * ------------------------------------------------------------------------- */

static const char *match(Matcher *m, const char *s, const char *p);

/* Greedy '*' (or '+' once the first repetition is done): take as many as the
 * item allows, then give them back one by one until the rest matches. */
static const char *repeat_greedy(Matcher *m, const char *s, const char *p, const char *ep) {
    ptrdiff_t n = 0;
    while (item_matches(m, s + n, p, ep))
        n++;
    for (; n >= 0; n--) {
        const char *end = match(m, s + n, ep + 1);
        if (end != NULL)
            return end;
    }
    return NULL;
}

/* Lazy '-': try the rest first, and take one more repetition only if it fails. */
static const char *repeat_lazy(Matcher *m, const char *s, const char *p, const char *ep) {
    for (;;) {
        const char *end = match(m, s, ep + 1);
        if (end != NULL)
            return end;
        if (!item_matches(m, s, p, ep))
            return NULL;
        s++;
    }
}

/* '(' or '()': record where the capture starts; it is forgotten again if the
 * rest of the pattern fails, so backtracking sees a consistent capture list. */
static const char *open_capture(Matcher *m, const char *s, const char *p, ptrdiff_t kind) {
    if (m->ncap >= PAT_MAX_CAPTURES)
        pattern_error(m, "too many captures");
    int i = m->ncap++;
    m->cap[i].start = s;
    m->cap[i].len = kind;
    const char *end = match(m, s, p);
    if (end == NULL)
        m->ncap--;
    return end;
}

/* ')': closes the innermost capture still open. */
static const char *close_capture(Matcher *m, const char *s, const char *p) {
    int i = m->ncap - 1;
    while (i >= 0 && m->cap[i].len != CAP_OPEN)
        i--;
    if (i < 0)
        pattern_error(m, "invalid pattern capture");
    m->cap[i].len = s - m->cap[i].start;
    const char *end = match(m, s, p);
    if (end == NULL)
        m->cap[i].len = CAP_OPEN; /* reopen it for the alternatives still to try */
    return end;
}

/* %1-%9 in a pattern: the same bytes as a closed capture. %0, a capture not yet
 * opened and one still open are all errors. A position capture has no text
 * and never matches. */
static const char *match_backref(Matcher *m, const char *s, int digit) {
    int i = digit - '1';
    if (i < 0 || i >= m->ncap || m->cap[i].len == CAP_OPEN)
        pattern_error(m, "invalid capture index %%%d", i + 1);
    ptrdiff_t len = m->cap[i].len;
    meter_bytes(&m->meter, len > 0 ? (size_t)len : 0);
    if (len >= 0 && m->src_end - s >= len && memcmp(m->cap[i].start, s, (size_t)len) == 0)
        return s + len;
    return NULL;
}

/* %bxy (p points at x): a run starting with x and ending at the y that brings
 * the nesting count back to zero. When x == y the second one closes. */
static const char *match_balance(Matcher *m, const char *s, const char *p) {
    if (p + 1 >= m->pat_end)
        pattern_error(m, "malformed pattern (missing arguments to '%%b')");
    if (s >= m->src_end || *s != *p)
        return NULL;
    char open = p[0], close = p[1];
    ptrdiff_t depth = 1;
    for (const char *q = s + 1; q < m->src_end; q++) {
        if (*q == close) {
            if (--depth == 0) {
                meter_add(&m->meter, 1 + (uint64_t)(q - s) / LOOP_BYTES_PER_STEP);
                return q + 1;
            }
        } else if (*q == open) {
            depth++;
        }
    }
    meter_add(&m->meter, 1 + (uint64_t)(m->src_end - s) / LOOP_BYTES_PER_STEP);
    return NULL;
}

/* Matches [p, pat_end) at s. See the section comment. */
static const char *match(Matcher *m, const char *s, const char *p) {
    if (m->depth_left-- == 0)
        pattern_error(m, "pattern too complex");
    meter_add(&m->meter, 1);

    const char *result;
    for (;;) {
        if (p == m->pat_end) {
            result = s;
            break;
        }

        /* Items that are not single-character items. Each either continues the
         * loop with the rest of the pattern or produces the result; a '$' that
         * does not end the pattern and an escape that is not %b, %f or a digit
         * fall through to the single-character code below. */
        switch (*p) {
        case '(':
            if (p + 1 < m->pat_end && p[1] == ')')
                result = open_capture(m, s, p + 2, CAP_POSITION);
            else
                result = open_capture(m, s, p + 1, CAP_OPEN);
            goto done;
        case ')':
            result = close_capture(m, s, p + 1);
            goto done;
        case '$':
            if (p + 1 == m->pat_end) {
                result = (s == m->src_end) ? s : NULL;
                goto done;
            }
            break;
        case ESC:
            if (p + 1 == m->pat_end)
                break; /* item_end() reports the dangling '%' */
            switch (p[1]) {
            case 'b':
                s = match_balance(m, s, p + 2);
                if (s == NULL) {
                    result = NULL;
                    goto done;
                }
                p += 4; /* a quantifier after %bxy is a literal */
                continue;
            case 'f': {
                const char *set = p + 2;
                if (set == m->pat_end || *set != '[')
                    pattern_error(m, "missing '[' after '%%f' in pattern");
                const char *set_end = item_end(m, set);
                /* The frontier sits between a byte outside the set and one
                 * inside; both ends of the subject count as '\0'. */
                int before = (s == m->src) ? 0 : uch(s[-1]);
                int after = (s < m->src_end) ? uch(*s) : 0;
                meter_add(&m->meter, 1 + 2 * (uint64_t)(set_end - set) / LOOP_BYTES_PER_STEP);
                if (!set_has(before, set, set_end - 1) && set_has(after, set, set_end - 1)) {
                    p = set_end;
                    continue;
                }
                result = NULL;
                goto done;
            }
            case '0': case '1': case '2': case '3': case '4':
            case '5': case '6': case '7': case '8': case '9':
                s = match_backref(m, s, uch(p[1]));
                if (s == NULL) {
                    result = NULL;
                    goto done;
                }
                p += 2;
                continue;
            default:
                break;
            }
            break;
        default:
            break;
        }

        /* A single-character item and its optional quantifier. */
        const char *ep = item_end(m, p);
        char quant = (ep < m->pat_end) ? *ep : '\0';
        if (!item_matches(m, s, p, ep)) {
            if (quant == '*' || quant == '?' || quant == '-') {
                p = ep + 1; /* zero repetitions are fine: go on with the rest */
                continue;
            }
            result = NULL;
            goto done;
        }
        switch (quant) {
        case '?': {
            const char *end = match(m, s + 1, ep + 1);
            if (end != NULL) {
                result = end;
                goto done;
            }
            p = ep + 1; /* the item could also be skipped */
            continue;
        }
        case '+':
            result = repeat_greedy(m, s + 1, p, ep);
            goto done;
        case '*':
            result = repeat_greedy(m, s, p, ep);
            goto done;
        case '-':
            result = repeat_lazy(m, s, p, ep);
            goto done;
        default:
            s++;
            p = ep;
            continue;
        }
    }
done:
    m->depth_left++;
    return result;
}

/* ----------------------------------------------------------------------------
 * Captures as results
 * ------------------------------------------------------------------------- */

/* Capture i of the match [s, e). With no explicit captures, "capture 1" is the
 * whole match. Returns 1 and sets *pos (1-based) for a position capture, else
 * 0 with the text in *text / *len. */
static int get_capture(Matcher *m, int i, const char *s, const char *e, const char **text, size_t *len,
                       lua_Integer *pos) {
    if (i >= m->ncap) {
        if (i != 0)
            pattern_error(m, "invalid capture index %%%d", i + 1);
        *text = s;
        *len = (size_t)(e - s);
        return 0;
    }
    const Capture *c = &m->cap[i];
    if (c->len == CAP_OPEN)
        pattern_error(m, "unfinished capture");
    if (c->len == CAP_POSITION) {
        *pos = (c->start - m->src) + 1;
        return 1;
    }
    *text = c->start;
    *len = (size_t)c->len;
    return 0;
}

/* Pushes one capture. The copy is charged (the caller flushes): a capture can be
 * long, and a replacement function or table may be fed it once per match. */
static void push_capture(Matcher *m, int i, const char *s, const char *e) {
    const char *text = NULL;
    size_t len = 0;
    lua_Integer pos = 0;
    if (get_capture(m, i, s, e, &text, &len, &pos)) {
        lua_pushinteger(m->meter.L, pos);
    } else {
        meter_bytes(&m->meter, len);
        lua_pushlstring(m->meter.L, text, len);
    }
}

/* Pushes every capture of the match [s, e), or the whole match if the pattern
 * has none and s is given (find passes NULL: it returns the positions itself). */
static int push_captures(Matcher *m, const char *s, const char *e) {
    int n = (m->ncap == 0 && s != NULL) ? 1 : m->ncap;
    luaL_checkstack(m->meter.L, n, "too many captures");
    for (int i = 0; i < n; i++)
        push_capture(m, i, s, e);
    return n;
}

/* ----------------------------------------------------------------------------
 * find and match
 * ------------------------------------------------------------------------- */

/* 0-based start offset for a 1-based, possibly negative, init argument. Values
 * before the subject clamp to its start; values past its end stay past it, and
 * the callers decide what that means. */
static size_t start_offset(lua_Integer pos, size_t len) {
    if (pos > 0)
        return (size_t)pos - 1;
    if (pos == 0 || pos < -(lua_Integer)len)
        return 0;
    return len - (size_t)(-pos);
}

/* Could the pattern mean anything but its literal bytes? Only these bytes ever
 * do (']' without a '[' is ordinary); without them find may search plainly. */
static int has_specials(const char *p, size_t lp) {
    for (size_t i = 0; i < lp; i++) {
        switch (p[i]) {
        case '^': case '$': case '*': case '+': case '?':
        case '.': case '(': case '[': case '%': case '-':
            return 1;
        default:
            break;
        }
    }
    return 0;
}

/* Do n bytes at a and b agree? Compared in blocks, one step per block, so a
 * candidate that fails early costs little and a long needle costs its length. */
static int bytes_equal(Meter *mt, const char *a, const char *b, size_t n) {
    while (n > 0) {
        size_t block = n < BYTES_PER_STEP ? n : BYTES_PER_STEP;
        meter_add(mt, 1);
        if (memcmp(a, b, block) != 0)
            return 0;
        a += block;
        b += block;
        n -= block;
    }
    return 1;
}

/* First occurrence of the needle in the haystack: memchr for its first byte,
 * then compare the rest. memchr runs window by window and each window is
 * charged, and so is each comparison, so the quadratic worst case of a needle
 * like "aaa...ab" in "aaa...a" is bounded by the budget. */
static const char *plain_find(Meter *mt, const char *hay, size_t hlen, const char *needle, size_t nlen) {
    meter_bytes(mt, nlen); /* has_specials() looked at the needle */
    if (nlen == 0)
        return hay;
    if (nlen > hlen)
        return NULL;
    const char *last = hay + (hlen - nlen); /* last place the needle can start */
    const char *cur = hay;
    while (cur <= last) {
        size_t window = (size_t)(last - cur) + 1;
        if (window > SCAN_WINDOW)
            window = SCAN_WINDOW;
        const char *hit = memchr(cur, uch(needle[0]), window);
        if (hit == NULL) {
            meter_bytes(mt, window);
            cur += window;
            continue;
        }
        meter_bytes(mt, (size_t)(hit - cur));
        if (bytes_equal(mt, hit + 1, needle + 1, nlen - 1))
            return hit;
        cur = hit + 1;
    }
    return NULL;
}

static int find_or_match(lua_State *L, int is_find) {
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    size_t init = start_offset(luaL_optinteger(L, 3, 1), ls);
    if (init > ls) {
        luaL_pushfail(L); /* even an empty pattern finds nothing past the end */
        return 1;
    }

    if (is_find && (lua_toboolean(L, 4) || !has_specials(p, lp))) {
        Meter mt = {L, 0};
        const char *hit = plain_find(&mt, s + init, ls - init, p, lp);
        meter_flush(&mt);
        if (hit == NULL) {
            luaL_pushfail(L);
            return 1;
        }
        lua_pushinteger(L, (hit - s) + 1);
        lua_pushinteger(L, (lua_Integer)((size_t)(hit - s) + lp));
        return 2;
    }

    int anchored = (lp > 0 && *p == '^');
    if (anchored) {
        p++;
        lp--;
    }
    Matcher m;
    matcher_init(&m, L, s, ls, p, lp);
    /* Try each start position in turn, including the end of the subject,
     * where an empty match is still possible. */
    for (const char *start = s + init;; start++) {
        matcher_restart(&m);
        const char *end = match(&m, start, p);
        if (end != NULL) {
            int n;
            if (is_find) {
                lua_pushinteger(L, (start - s) + 1);
                lua_pushinteger(L, end - s);
                n = push_captures(&m, NULL, NULL) + 2;
            } else {
                n = push_captures(&m, start, end);
            }
            meter_flush(&m.meter);
            return n;
        }
        if (anchored || start >= m.src_end)
            break;
    }
    meter_flush(&m.meter);
    luaL_pushfail(L);
    return 1;
}

int rs_str_find(lua_State *L) {
    return find_or_match(L, 1);
}

int rs_str_match(lua_State *L) {
    return find_or_match(L, 0);
}

/* ----------------------------------------------------------------------------
 * gmatch
 *
 * The iterator's state is four upvalues: subject, pattern (which also keep the
 * strings alive), the offset where the next search starts, and the offset
 * where the previous match ended (-1 before the first one). An empty match
 * right where the previous match ended is skipped, as in Lua 5.4. A leading '^'
 * is not an anchor here: it would stop the iteration after one match, so (as
 * in stock Lua) it is matched as a literal '^'.
 * ------------------------------------------------------------------------- */

static int gmatch_next(lua_State *L) {
    size_t ls, lp;
    const char *s = lua_tolstring(L, lua_upvalueindex(1), &ls);
    const char *p = lua_tolstring(L, lua_upvalueindex(2), &lp);
    lua_Integer from = lua_tointeger(L, lua_upvalueindex(3));
    lua_Integer last_end = lua_tointeger(L, lua_upvalueindex(4));

    if (from < 0 || (size_t)from > ls)
        return 0; /* started past the end */
    Matcher m;
    matcher_init(&m, L, s, ls, p, lp);
    for (const char *start = s + from; start <= m.src_end; start++) {
        matcher_restart(&m);
        const char *end = match(&m, start, p);
        if (end != NULL && end - s != last_end) {
            lua_pushinteger(L, end - s);
            lua_copy(L, -1, lua_upvalueindex(3));
            lua_replace(L, lua_upvalueindex(4));
            int n = push_captures(&m, start, end);
            meter_flush(&m.meter);
            return n;
        }
    }
    meter_flush(&m.meter);
    return 0; /* exhausted; a further call searches the same tail again */
}

int rs_str_gmatch(lua_State *L) {
    size_t ls, lp;
    luaL_checklstring(L, 1, &ls);
    luaL_checklstring(L, 2, &lp);
    size_t init = start_offset(luaL_optinteger(L, 3, 1), ls);
    if (init > ls)
        init = ls + 1; /* past the end: the iterator finds nothing */
    lua_settop(L, 2);
    lua_pushinteger(L, (lua_Integer)init);
    lua_pushinteger(L, -1);
    lua_pushcclosure(L, gmatch_next, 4);
    return 1;
}

/* ----------------------------------------------------------------------------
 * gsub
 * ------------------------------------------------------------------------- */

/* Appends the replacement string (argument 3) for the match [s, e): "%0" is the
 * match, "%1".."%9" captures, "%%" a percent sign; any other '%' is an error. */
static void append_template(Matcher *m, luaL_Buffer *b, const char *s, const char *e) {
    lua_State *L = m->meter.L;
    size_t len;
    const char *r = lua_tolstring(L, 3, &len);
    const char *r_end = r + len;
    const char *esc;
    while ((esc = memchr(r, ESC, (size_t)(r_end - r))) != NULL) {
        meter_bytes(&m->meter, (size_t)(esc - r));
        luaL_addlstring(b, r, (size_t)(esc - r));
        char what = (esc + 1 < r_end) ? esc[1] : '\0';
        if (what == ESC) {
            luaL_addchar(b, ESC);
        } else if (what == '0') {
            meter_bytes(&m->meter, (size_t)(e - s));
            luaL_addlstring(b, s, (size_t)(e - s));
        } else if (isdigit(uch(what))) {
            const char *text = NULL;
            size_t tlen = 0;
            lua_Integer pos = 0;
            if (get_capture(m, what - '1', s, e, &text, &tlen, &pos)) {
                lua_pushinteger(L, pos);
                luaL_addvalue(b); /* the position, in decimal */
            } else {
                meter_bytes(&m->meter, tlen);
                luaL_addlstring(b, text, tlen);
            }
        } else {
            pattern_error(m, "invalid use of '%c' in replacement string", ESC);
        }
        r = esc + 2;
    }
    meter_bytes(&m->meter, (size_t)(r_end - r));
    luaL_addlstring(b, r, (size_t)(r_end - r));
}

/* Appends the replacement for the match [s, e) according to the type of
 * argument 3. Returns whether the output differs from the input there: a table
 * or function result of false/nil keeps the original text. */
static int append_replacement(Matcher *m, luaL_Buffer *b, const char *s, const char *e, int repl_type) {
    lua_State *L = m->meter.L;
    if (repl_type == LUA_TSTRING || repl_type == LUA_TNUMBER) {
        append_template(m, b, s, e);
        return 1;
    }
    /* Lua code runs next (the function, or an __index metamethod): charge
     * what was done so far before it does. */
    if (repl_type == LUA_TFUNCTION) {
        lua_pushvalue(L, 3);
        int n = push_captures(m, s, e);
        meter_flush(&m->meter);
        lua_call(L, n, 1);
    } else {
        push_capture(m, 0, s, e); /* the first capture is the key */
        meter_flush(&m->meter);
        lua_gettable(L, 3);
    }
    if (!lua_toboolean(L, -1)) {
        lua_pop(L, 1);
        meter_bytes(&m->meter, (size_t)(e - s));
        luaL_addlstring(b, s, (size_t)(e - s));
        return 0;
    }
    if (!lua_isstring(L, -1))
        return pattern_error(m, "invalid replacement value (a %s)", luaL_typename(L, -1));
    size_t vlen;
    lua_tolstring(L, -1, &vlen);
    meter_bytes(&m->meter, vlen);
    luaL_addvalue(b);
    return 1;
}

int rs_str_gsub(lua_State *L) {
    size_t ls, lp;
    const char *src = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    int repl_type = lua_type(L, 3);
    lua_Integer max_n = luaL_optinteger(L, 4, (lua_Integer)ls + 1);
    luaL_argexpected(L,
                     repl_type == LUA_TNUMBER || repl_type == LUA_TSTRING || repl_type == LUA_TFUNCTION ||
                         repl_type == LUA_TTABLE,
                     3, "string/function/table");

    luaL_Buffer b;
    luaL_buffinit(L, &b);
    int anchored = (lp > 0 && *p == '^');
    if (anchored) {
        p++;
        lp--;
    }
    Matcher m;
    matcher_init(&m, L, src, ls, p, lp);

    const char *cur = src;
    const char *last_end = NULL; /* an empty match may not follow a match directly */
    lua_Integer n = 0;
    int changed = 0;
    while (n < max_n) {
        matcher_restart(&m);
        const char *end = match(&m, cur, p);
        if (end != NULL && end != last_end) {
            n++;
            changed |= append_replacement(&m, &b, cur, end, repl_type);
            cur = last_end = end;
        } else if (cur < m.src_end) {
            luaL_addchar(&b, *cur++); /* no match here: keep the byte, move on */
        } else {
            break;
        }
        if (anchored)
            break;
    }

    if (!changed) {
        lua_pushvalue(L, 1); /* nothing replaced: the subject itself */
    } else {
        meter_bytes(&m.meter, (size_t)(m.src_end - cur));
        luaL_addlstring(&b, cur, (size_t)(m.src_end - cur));
        luaL_pushresult(&b);
    }
    meter_flush(&m.meter);
    lua_pushinteger(L, n);
    return 2;
}
