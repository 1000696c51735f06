/*
 * rs_freeze.c - making sure no state survives an evaluation.
 *
 * A rule set is loaded once per worker and then evaluated many times in the
 * same Lua state, because a fresh state per request costs ~30 us. Two things
 * could carry one request's data into the next:
 *   - tables that exist at load time (file-level tables, globals, library
 *     tables, the declarations themselves): after loading, every one reachable
 *     from the rules is frozen in place (rs_freeze_table), so writes raise;
 *   - variables captured by load-time closures (upvalues): a rule function
 *     that assigns to a file-level local would keep state in it. Upvalues
 *     cannot be made read-only, so the compiled code of every reachable
 *     closure is inspected and such assignments are refused at load, with
 *     the file and line of the assignment.
 * Values that cannot be frozen (coroutines, C closures with state such as a
 * gmatch iterator, userdata) refuse the rule set if the rules can reach them.
 */
#include "rs_state.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* ---- compiled-code inspection ------------------------------------------------------------ */

/* Lua 5.4's binary chunk layout (ldump.c). The header is checked in full, so a Lua built differently is refused
 * instead of misread. */
#define BC_VERSION 0x54
#define BC_FORMAT 0
/* The opcodes read here (lopcodes.h; Lua 5.4.0 to 5.4.6 number them alike): those that write upvalues, and those a
 * rule's shape is read from (a range test names only its ends). */
enum {
    OP_MOVE = 0,
    OP_LFALSESKIP = 6,
    OP_GETUPVAL = 9,
    OP_SETUPVAL = 10,
    OP_GETTABUP = 11,
    OP_GETTABLE = 12,
    OP_GETI = 13,
    OP_GETFIELD = 14,
    OP_SETTABUP = 15,
    OP_SETTABLE = 16,
    OP_SETFIELD = 18,
    OP_SELF = 20,
    OP_ADDI = 21,
    OP_ADD = 34,
    OP_SHR = 45,
    OP_MMBIN = 46,
    OP_MMBINK = 48,
    OP_UNM = 49,
    OP_LEN = 52,
    OP_CLOSE = 54,
    OP_TBC = 55,
    OP_JMP = 56,
    OP_EQ = 57,
    OP_LE = 59,
    OP_TEST = 66,
    OP_TESTSET = 67,
    OP_CALL = 68,
    OP_TAILCALL = 69,
    OP_FORLOOP = 73,
    OP_TFORLOOP = 77,
    OP_SETLIST = 78,
    OP_EXTRAARG = 82,
};
#define ABSLINEINFO (-0x80)
#define TAG_NIL 0x00
#define TAG_FALSE 0x01
#define TAG_TRUE 0x11
#define TAG_INT 0x03
#define TAG_FLOAT 0x13
#define TAG_SHORTSTR 0x04
#define TAG_LONGSTR 0x14

typedef struct bc_reader {
    const unsigned char *p, *end;
    bool bad;
} bc_reader;

typedef struct bc_string {
    const char *s;
    size_t len; /* s == NULL: absent */
} bc_string;

typedef struct bc_abs {
    int pc, line;
} bc_abs;

typedef struct bc_proto {
    bc_string source;
    int linedefined;
    unsigned numparams;
    bool is_vararg;
    uint32_t *code;
    size_t ncode;
    bc_string *kstr; /* string constants by index (other constants: s == NULL) */
    size_t nk;
    unsigned char *up_instack, *up_idx;
    size_t nup;
    struct bc_proto *protos;
    size_t nprotos;
    signed char *lineinfo;
    size_t nlineinfo;
    bc_abs *abslineinfo;
    size_t nabs;
    bc_string *upnames;
    size_t nupnames;
} bc_proto;

static unsigned char bc_byte(bc_reader *r) {
    if (r->p >= r->end) {
        r->bad = true;
        return 0;
    }
    return *r->p++;
}

static size_t bc_size(bc_reader *r) {
    size_t x = 0;
    for (int i = 0; i < 10; i++) {
        unsigned char b = bc_byte(r);
        x = (x << 7) | (b & 0x7F);
        if (b & 0x80) return x;
        if (r->bad) return 0;
    }
    r->bad = true;
    return 0;
}

static const unsigned char *bc_block(bc_reader *r, size_t n) {
    if ((size_t)(r->end - r->p) < n) {
        r->bad = true;
        return NULL;
    }
    const unsigned char *b = r->p;
    r->p += n;
    return b;
}

static bc_string bc_str(bc_reader *r) {
    bc_string s = {NULL, 0};
    size_t size = bc_size(r);
    if (size == 0 || r->bad) return s;
    const unsigned char *b = bc_block(r, size - 1);
    if (b) {
        s.s = (const char *)b;
        s.len = size - 1;
    }
    return s;
}

static void *bc_alloc(bc_reader *r, size_t n, size_t size) {
    if (r->bad || n > (size_t)(r->end - r->p) + 1) { /* each element takes at least one byte */
        r->bad = true;
        return NULL;
    }
    void *p = calloc(n ? n : 1, size);
    if (p == NULL) r->bad = true;
    return p;
}

static void bc_free(bc_proto *f) {
    free(f->code);
    free(f->kstr);
    free(f->up_instack);
    free(f->up_idx);
    for (size_t i = 0; f->protos && i < f->nprotos; i++) bc_free(&f->protos[i]);
    free(f->protos);
    free(f->lineinfo);
    free(f->abslineinfo);
    free(f->upnames);
}

static void bc_function(bc_reader *r, bc_proto *f, bc_string parent_source, int depth) {
    if (depth > 250) {
        r->bad = true;
        return;
    }
    f->source = bc_str(r);
    if (f->source.s == NULL) f->source = parent_source;
    f->linedefined = (int)bc_size(r);
    (void)bc_size(r); /* lastlinedefined */
    f->numparams = bc_byte(r);
    f->is_vararg = bc_byte(r) != 0;
    (void)bc_byte(r); /* maxstacksize */
    f->ncode = bc_size(r);
    f->code = bc_alloc(r, f->ncode, sizeof *f->code);
    const unsigned char *code = bc_block(r, f->ncode * 4);
    if (code && f->code) memcpy(f->code, code, f->ncode * 4);
    f->nk = bc_size(r);
    f->kstr = bc_alloc(r, f->nk, sizeof *f->kstr);
    for (size_t i = 0; i < f->nk && !r->bad; i++) {
        switch (bc_byte(r)) {
        case TAG_NIL:
        case TAG_FALSE:
        case TAG_TRUE: break;
        case TAG_INT:
        case TAG_FLOAT: bc_block(r, 8); break;
        case TAG_SHORTSTR:
        case TAG_LONGSTR: f->kstr[i] = bc_str(r); break;
        default: r->bad = true;
        }
    }
    f->nup = bc_size(r);
    f->up_instack = bc_alloc(r, f->nup, 1);
    f->up_idx = bc_alloc(r, f->nup, 1);
    for (size_t i = 0; i < f->nup && !r->bad; i++) {
        f->up_instack[i] = bc_byte(r);
        f->up_idx[i] = bc_byte(r);
        (void)bc_byte(r); /* kind */
    }
    f->nprotos = bc_size(r);
    f->protos = bc_alloc(r, f->nprotos, sizeof *f->protos);
    for (size_t i = 0; i < f->nprotos && !r->bad; i++) bc_function(r, &f->protos[i], f->source, depth + 1);
    f->nlineinfo = bc_size(r);
    f->lineinfo = bc_alloc(r, f->nlineinfo, 1);
    const unsigned char *li = bc_block(r, f->nlineinfo);
    if (li && f->lineinfo) memcpy(f->lineinfo, li, f->nlineinfo);
    f->nabs = bc_size(r);
    f->abslineinfo = bc_alloc(r, f->nabs, sizeof *f->abslineinfo);
    for (size_t i = 0; i < f->nabs && !r->bad; i++) {
        f->abslineinfo[i].pc = (int)bc_size(r);
        f->abslineinfo[i].line = (int)bc_size(r);
    }
    size_t nloc = bc_size(r);
    for (size_t i = 0; i < nloc && !r->bad; i++) {
        (void)bc_str(r);
        (void)bc_size(r);
        (void)bc_size(r);
    }
    f->nupnames = bc_size(r);
    f->upnames = bc_alloc(r, f->nupnames, sizeof *f->upnames);
    for (size_t i = 0; i < f->nupnames && !r->bad; i++) f->upnames[i] = bc_str(r);
}

/* Source line of instruction `pc`: the last absolute anchor at or before it, plus the deltas. */
static int bc_line(const bc_proto *f, int pc) {
    if (f->nlineinfo == 0) return 0;
    int basepc = -1, line = f->linedefined;
    for (size_t i = 0; i < f->nabs; i++) {
        if (f->abslineinfo[i].pc > pc) break;
        basepc = f->abslineinfo[i].pc;
        line = f->abslineinfo[i].line;
    }
    while (basepc++ < pc && (size_t)basepc < f->nlineinfo) {
        if (f->lineinfo[basepc] != ABSLINEINFO) line += f->lineinfo[basepc];
    }
    return line;
}

static void bc_name(const bc_string *s, char *dst, size_t cap) {
    if (s == NULL || s->s == NULL) {
        snprintf(dst, cap, "?");
        return;
    }
    rs_escape_text(dst, cap, s->s, s->len);
}

/* Reports writes, in `f` and the functions nested in it, to upvalues that are load-time cells
 * (`loadtime[i]` for upvalue i of f). Returns the number reported. */
static int bc_check(rs_state *S, const bc_proto *f, const bool *loadtime, int budget) {
    int found = 0;
    char file[256], name[128], key[128];
    bc_name(&f->source, file, sizeof file);
    const char *path = file[0] == '@' || file[0] == '=' ? file + 1 : file;
    for (size_t pc = 0; pc < f->ncode && found < budget; pc++) {
        uint32_t ins = f->code[pc];
        unsigned op = ins & 0x7F;
        if (op == OP_SETUPVAL) {
            unsigned b = (ins >> 16) & 0xFF;
            if (b < f->nup && loadtime[b]) {
                bc_name(b < f->nupnames ? &f->upnames[b] : NULL, name, sizeof name);
                rs_add_diag(S, path, bc_line(f, (int)pc),
                            "a rule function assigns to the file-level variable '%s'; state must not survive an "
                            "evaluation (use a local inside the function)",
                            name);
                found++;
            }
        } else if (op == OP_SETTABUP) {
            unsigned a = (ins >> 7) & 0xFF, b = (ins >> 16) & 0xFF;
            if (a < f->nup && loadtime[a]) {
                bc_name(a < f->nupnames ? &f->upnames[a] : NULL, name, sizeof name);
                bc_name(b < f->nk ? &f->kstr[b] : NULL, key, sizeof key);
                if (strcmp(name, "_ENV") == 0)
                    rs_add_diag(S, path, bc_line(f, (int)pc),
                                "a rule function assigns to the global '%s'; state must not survive an evaluation "
                                "(use a local inside the function)",
                                key);
                else
                    rs_add_diag(S, path, bc_line(f, (int)pc),
                                "a rule function assigns to field '%s' of the file-level table '%s', which is "
                                "read-only after loading",
                                key, name);
                found++;
            }
        }
    }
    for (size_t i = 0; i < f->nprotos && found < budget; i++) {
        const bc_proto *q = &f->protos[i];
        bool *inner = calloc(q->nup ? q->nup : 1, sizeof *inner);
        if (inner == NULL) abort();
        bool any = false;
        for (size_t u = 0; u < q->nup; u++) {
            /* In the stack: a local of the enclosing function's own activation, fresh per call.
             * Otherwise: an upvalue of the enclosing function, load-time if that one is. */
            inner[u] = !q->up_instack[u] && q->up_idx[u] < f->nup && loadtime[q->up_idx[u]];
            any = any || inner[u];
        }
        if (any) found += bc_check(S, q, inner, budget - found);
        free(inner);
    }
    return found;
}

/* ---- rule shapes ---------------------------------------------------------------------------------------------- */

#define INS_OP(i) ((unsigned)(i) & 0x7Fu)
#define INS_A(i) (((unsigned)(i) >> 7) & 0xFFu)
#define INS_K(i) (((unsigned)(i) >> 15) & 1u)
#define INS_B(i) (((unsigned)(i) >> 16) & 0xFFu)
#define INS_C(i) (((unsigned)(i) >> 24) & 0xFFu)
#define INS_SJ(i) ((int32_t)(((uint32_t)(i) >> 7) & 0x1FFFFFFu) - 0xFFFFFF)

/* Instructions that write no register (their A, if any, is read). */
static bool writes_no_register(unsigned op) {
    return (op >= OP_EQ && op <= OP_TEST) || op == OP_SETUPVAL || (op >= OP_SETTABUP && op <= OP_SETFIELD) ||
           op == OP_SETLIST || op == OP_CLOSE || op == OP_JMP || op == OP_EXTRAARG;
}

/* Whether field B, and field C, of an instruction name a register (C: or a constant, when k is set). */
static bool b_is_register(unsigned op) {
    return op == OP_MOVE || (op >= OP_GETTABLE && op <= OP_GETFIELD) || op == OP_SETTABLE || op == OP_SELF ||
           (op >= OP_ADDI && op <= OP_MMBIN) || (op >= OP_UNM && op <= OP_LEN) || (op >= OP_EQ && op <= OP_LE) ||
           op == OP_TESTSET;
}

static bool c_is_register(uint32_t ins) {
    unsigned op = INS_OP(ins);
    if (op == OP_GETTABLE || (op >= OP_ADD && op <= OP_SHR)) return true;
    return (op == OP_SETTABUP || (op >= OP_SETTABLE && op <= OP_SETFIELD) || op == OP_SELF) && !INS_K(ins);
}

/*
 * Pushes the value register `reg` holds when instruction `pc` runs, when the code before it leaves no doubt: the
 * register was last written by a load from one of the closure's upvalues, or a constant field of such a value
 * (loaded the same way), nothing in between wrote it, and nothing jumps in between. Load-time values are frozen and
 * upvalues cannot be assigned after loading (bc_check), so the value found now is the value every call sees.
 * Returns false, pushing nothing, otherwise.
 */
static bool push_known_register(lua_State *L, int closure, const bc_proto *f, const bool *target, size_t pc,
                                unsigned reg, int depth) {
    if (depth > 8 || !lua_checkstack(L, 2)) return false;
    for (size_t j = pc; j-- > 0;) {
        if (target[j + 1]) return false;
        uint32_t ins = f->code[j];
        unsigned op = INS_OP(ins), a = INS_A(ins);
        if (writes_no_register(op)) continue;
        if (op >= OP_MMBIN && op <= OP_MMBINK) { /* writes the register of the instruction before it */
            if (j == 0 || INS_A(f->code[j - 1]) <= reg) return false;
            continue;
        }
        if (a > reg) continue; /* every other instruction writes registers from its A upwards */
        if (a < reg) return false;
        switch (op) {
        case OP_MOVE: return push_known_register(L, closure, f, target, j, INS_B(ins), depth + 1);
        case OP_GETUPVAL: return lua_getupvalue(L, closure, (int)INS_B(ins) + 1) != NULL;
        case OP_GETTABUP:
        case OP_GETFIELD: {
            unsigned key = INS_C(ins);
            if (key >= f->nk || f->kstr[key].s == NULL) return false;
            bool known = op == OP_GETTABUP ? lua_getupvalue(L, closure, (int)INS_B(ins) + 1) != NULL
                                             : push_known_register(L, closure, f, target, j, INS_B(ins), depth + 1);
            if (!known) return false;
            if (lua_type(L, -1) != LUA_TTABLE) {
                lua_pop(L, 1);
                return false;
            }
            lua_pushlstring(L, f->kstr[key].s, f->kstr[key].len);
            lua_gettable(L, -2); /* through frozen tables' __index tables: no code runs (no metatable is a rule's) */
            lua_remove(L, -2);
            return true;
        }
        default: return false;
        }
    }
    return false; /* a parameter, or nothing loaded it */
}

/* The context keys (RS_CONTEXT_KEYS_KNOWN and their bits) that the sealed function f reads, when it reads the
 * context (register 0) only with constant string keys; 0 otherwise, or when its keys do not all fit in the state's
 * list (then it adds none of them, so that one rule reading many keys leaves room for the others). */
static uint64_t context_keys_read(rs_state *S, const bc_proto *f) {
    const bc_string *fresh[RS_CONTEXT_KEY_NAMES]; /* keys not numbered yet, each once */
    unsigned nfresh = 0, room = RS_CONTEXT_KEY_NAMES - S->context_key_count;
    for (int pass = 0; pass < 2; pass++) {
        uint64_t keys = RS_CONTEXT_KEYS_KNOWN;
        for (size_t pc = 0; pc < f->ncode; pc++) {
            uint32_t ins = f->code[pc];
            unsigned op = INS_OP(ins);
            if ((op != OP_GETFIELD && op != OP_GETI && op != OP_GETTABLE) || INS_B(ins) != 0) continue;
            if (op != OP_GETFIELD || INS_C(ins) >= f->nk || f->kstr[INS_C(ins)].s == NULL) return 0;
            const bc_string *k = &f->kstr[INS_C(ins)];
            if (k->len > RS_CONTEXT_KEY_MAX_LEN) return 0;
            unsigned number = rs_context_key_number(S, k->s, k->len, pass == 1);
            if (pass == 1) {
                keys |= 1ull << (number - 1); /* every key fits: each has a number now */
                continue;
            }
            if (number != 0) continue;
            bool listed = false;
            for (unsigned i = 0; i < nfresh && !listed; i++)
                listed = fresh[i]->len == k->len && memcmp(fresh[i]->s, k->s, k->len) == 0;
            if (listed) continue;
            if (nfresh == room) return 0;
            fresh[nfresh++] = k;
        }
        if (pass == 1) return keys;
    }
    return 0;
}

/* The shape (RS_SHAPE_*) of the Lua function at `closure`, whose compiled code is f; and, for a sealed one, the
 * context keys it reads (context_keys_read). */
static uint16_t closure_shape(rs_state *S, lua_State *L, int closure, const bc_proto *f, uint64_t *keys) {
    *keys = 0;
    if (S->user_metatables) return 0;
    bool *target = calloc(f->ncode + 2, sizeof *target);
    if (target == NULL) return 0;
    for (size_t pc = 0; pc < f->ncode; pc++) {
        uint32_t ins = f->code[pc];
        unsigned op = INS_OP(ins);
        if (op == OP_JMP) {
            int64_t to = (int64_t)pc + 1 + INS_SJ(ins);
            if (to >= 0 && (size_t)to <= f->ncode) target[to] = true;
        } else if ((op >= OP_EQ && op <= OP_TESTSET) || op == OP_LFALSESKIP) {
            if (pc + 2 <= f->ncode) target[pc + 2] = true; /* the instruction after the skipped one */
        }
    }
    bool straight = f->ncode > 0 && f->ncode <= RS_SHAPE_STRAIGHT_MASK;
    bool sealed = f->numparams >= 1 && !f->is_vararg;
    for (size_t pc = 0; pc < f->ncode && (straight || sealed); pc++) {
        uint32_t ins = f->code[pc];
        unsigned op = INS_OP(ins);
        if (straight) {
            if ((op == OP_JMP && INS_SJ(ins) < 0) || (op >= OP_FORLOOP && op <= OP_TFORLOOP) || op == OP_TBC) {
                straight = false;
            } else if (op == OP_CALL || op == OP_TAILCALL) {
                int top = lua_gettop(L);
                straight = push_known_register(L, closure, f, target, pc, INS_A(ins), 0) &&
                           lua_tocfunction(L, -1) != NULL && rs_helper_runs_no_lua(lua_tocfunction(L, -1));
                lua_settop(L, top);
            }
        }
        if (sealed) {
            /* Register 0 is the context. Indexing it is all a sealed function does with it. */
            bool indexes = (op == OP_GETFIELD || op == OP_GETI || op == OP_GETTABLE) && INS_B(ins) == 0;
            if (indexes) sealed = INS_A(ins) != 0 && !(op == OP_GETTABLE && INS_C(ins) == 0);
            else if (op != OP_JMP && op != OP_EXTRAARG && INS_A(ins) == 0) sealed = false;
            else if (b_is_register(op) && INS_B(ins) == 0) sealed = false;
            else if (c_is_register(ins) && INS_C(ins) == 0) sealed = false;
        }
    }
    for (size_t i = 0; i < f->nprotos && sealed; i++) {
        const bc_proto *q = &f->protos[i];
        for (size_t u = 0; u < q->nup; u++)
            if (q->up_instack[u] && q->up_idx[u] == 0) sealed = false; /* a closure captures the context */
    }
    free(target);
    if (sealed) *keys = context_keys_read(S, f);
    return (uint16_t)((straight ? f->ncode : 0) | (sealed ? RS_SHAPE_SEALED : 0));
}

/*
 * The shapes found while loading, by closure, until rs_shape_rules hands them to the flags: an open-addressing table
 * of closure addresses (48 bits on x86-64 and arm64) packed with their shapes into 8 bytes. Its memory is mapped and
 * unmapped directly: with 10,000 rules a malloc'd table and its growth left about 1 MiB resident per state built.
 */
typedef struct rs_shape_slot {
    uint64_t packed; /* closure address << 16 | shape; 0: empty */
    uint64_t keys;   /* the context keys a sealed closure reads (context_keys_read) */
} rs_shape_slot;

static rs_shape_slot *shape_table_new(size_t cap) {
    void *p = mmap(NULL, cap * sizeof(rs_shape_slot), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void shape_table_free(rs_shape_slot *t, size_t cap) {
    if (t != NULL) munmap(t, cap * sizeof *t);
}

static size_t shape_home(uint64_t address, size_t cap) {
    return (size_t)((address * 0x9E3779B97F4A7C15ull) >> 32) & (cap - 1);
}

static void shape_put(rs_shape_slot *t, size_t cap, rs_shape_slot slot) {
    size_t h = shape_home(slot.packed >> 16, cap);
    while (t[h].packed != 0 && (t[h].packed >> 16) != (slot.packed >> 16)) h = (h + 1) & (cap - 1);
    t[h] = slot;
}

static void remember_shape(rs_state *S, const void *closure, uint16_t shape, uint64_t keys) {
    uint64_t address = (uint64_t)(uintptr_t)closure;
    if (shape == 0 || address >> 48 != 0) return; /* a shape not remembered is a rule evaluated the general way */
    if ((S->shape_count + 1) * 4 > S->shape_cap * 3) {
        size_t cap = S->shape_cap ? S->shape_cap * 2 : 512;
        rs_shape_slot *grown = shape_table_new(cap);
        if (grown == NULL) return;
        for (size_t i = 0; i < S->shape_cap; i++)
            if (S->shapes[i].packed != 0) shape_put(grown, cap, S->shapes[i]);
        shape_table_free(S->shapes, S->shape_cap);
        S->shapes = grown;
        S->shape_cap = cap;
    }
    S->shape_count++;
    shape_put(S->shapes, S->shape_cap, (rs_shape_slot){address << 16 | shape, keys});
}

static rs_shape_slot recall_shape(const rs_state *S, const void *closure) {
    rs_shape_slot none = {0, 0};
    if (S->shape_cap == 0) return none;
    uint64_t address = (uint64_t)(uintptr_t)closure;
    for (size_t h = shape_home(address, S->shape_cap); S->shapes[h].packed != 0; h = (h + 1) & (S->shape_cap - 1))
        if ((S->shapes[h].packed >> 16) == address) return S->shapes[h];
    return none;
}

void rs_forget_shapes(rs_state *S) {
    shape_table_free(S->shapes, S->shape_cap);
    S->shapes = NULL;
    S->shape_cap = S->shape_count = 0;
}

void rs_shape_rules(rs_state *S, lua_State *L) {
    for (size_t i = 0; i < S->flag_count; i++) {
        rs_flag_entry *f = &S->flags[i];
        f->shape = 0;
        f->context_keys = 0;
        if (f->rule_ref == LUA_NOREF || S->user_metatables) continue;
        lua_rawgeti(L, LUA_REGISTRYINDEX, f->rule_ref);
        rs_shape_slot found = recall_shape(S, lua_topointer(L, -1));
        f->shape = (uint16_t)found.packed;
        if (f->shape & RS_SHAPE_SEALED) f->context_keys = found.keys;
        lua_pop(L, 1);
    }
    rs_forget_shapes(S);
    rs_renumber_cached_keys(S);
}

/* lua_dump's writer: appends to the state's scratch buffer, which every closure checked reuses (a Lua string per
 * closure, built through a luaL_Buffer, was a tenth of the build of 10,000 flags). Host memory, freed when the
 * freeze ends (rs_release_scratch) or with the state. */
static int dump_writer(lua_State *L, const void *p, size_t sz, void *ud) {
    (void)L;
    rs_state *S = ud;
    if (S->scratch_len + sz > S->scratch_cap) {
        size_t cap = S->scratch_cap ? S->scratch_cap : 4096;
        while (cap < S->scratch_len + sz) cap *= 2;
        char *grown = realloc(S->scratch, cap);
        if (grown == NULL) return 1;
        S->scratch = grown;
        S->scratch_cap = cap;
    }
    memcpy(S->scratch + S->scratch_len, p, sz);
    S->scratch_len += sz;
    return 0;
}

void rs_release_scratch(rs_state *S) {
    free(S->scratch);
    S->scratch = NULL;
    S->scratch_len = S->scratch_cap = 0;
}

int rs_check_closure(rs_state *S, lua_State *L, int idx) {
    idx = lua_absindex(L, idx);
    lua_pushvalue(L, idx);
    S->scratch_len = 0;
    int rc = lua_dump(L, dump_writer, S, 0);
    lua_pop(L, 1);
    if (rc != 0) {
        rs_add_diag(S, "", 0, "cannot inspect a rule function (dump failed)");
        return 1;
    }
    const unsigned char *bytes = (const unsigned char *)S->scratch;
    bc_reader r = {bytes, bytes + S->scratch_len, false};
    static const unsigned char signature[] = "\x1bLua";
    static const unsigned char data[] = "\x19\x93\r\n\x1a\n";
    const unsigned char *sig = bc_block(&r, 4);
    bool header_ok = sig && memcmp(sig, signature, 4) == 0 && bc_byte(&r) == BC_VERSION && bc_byte(&r) == BC_FORMAT;
    const unsigned char *d = header_ok ? bc_block(&r, 6) : NULL;
    header_ok = header_ok && d && memcmp(d, data, 6) == 0 && bc_byte(&r) == 4 && bc_byte(&r) == 8 &&
                bc_byte(&r) == 8 && bc_block(&r, 16) != NULL;
    int found = 0;
    if (!header_ok) {
        rs_add_diag(S, "", 0, "cannot inspect compiled rules: unexpected Lua bytecode format");
        found = 1;
    } else {
        (void)bc_byte(&r); /* number of upvalues of the main function */
        bc_proto f;
        memset(&f, 0, sizeof f);
        bc_string none = {NULL, 0};
        bc_function(&r, &f, none, 0);
        if (r.bad) {
            rs_add_diag(S, "", 0, "cannot inspect compiled rules: malformed bytecode");
            found = 1;
        } else {
            bool *loadtime = calloc(f.nup ? f.nup : 1, sizeof *loadtime);
            if (loadtime == NULL) abort();
            for (size_t u = 0; u < f.nup; u++) loadtime[u] = true; /* every cell of a load-time closure */
            found = bc_check(S, &f, loadtime, 20);
            free(loadtime);
            if (found == 0) {
                uint64_t keys;
                uint16_t shape = closure_shape(S, L, idx, &f, &keys);
                remember_shape(S, lua_topointer(L, idx), shape, keys);
            }
        }
        bc_free(&f);
    }
    return found;
}

/* ---- reachability ------------------------------------------------------------------------ */

/* Work list entries: (value, origin) where origin indexes the roots table for error reports. */
static void push_work(lua_State *L, int work, lua_Integer *n, int value, lua_Integer origin) {
    lua_pushvalue(L, value);
    lua_rawseti(L, work, ++*n);
    lua_pushinteger(L, origin);
    lua_rawseti(L, work, ++*n);
}

static void origin_report(rs_state *S, lua_State *L, int roots, lua_Integer origin, const char *what) {
    lua_rawgeti(L, roots, origin);
    lua_getfield(L, -1, "file");
    lua_getfield(L, -2, "line");
    lua_getfield(L, -3, "what");
    if (lua_isnil(L, -1)) { /* a declaration record: described by its kind and key, only when reported */
        static const char *const kinds[] = {"a rule", "flag", "route", "config"};
        lua_getfield(L, -4, "kind");
        lua_Integer kind = lua_tointeger(L, -1);
        lua_getfield(L, -5, "key");
        lua_pushfstring(L, "%s '%s'", kinds[kind >= DECL_FLAG && kind <= DECL_CONFIG ? kind : 0], lua_tostring(L, -1));
        lua_replace(L, -4);
        lua_pop(L, 2);
    }
    rs_add_diag(S, lua_tostring(L, -3), (int32_t)lua_tointeger(L, -2), "%s keeps %s, which cannot be made read-only",
                lua_tostring(L, -1) ? lua_tostring(L, -1) : "a rule", what);
    lua_pop(L, 4);
}

void rs_freeze_reachable(rs_state *S, lua_State *L, int roots) {
    roots = lua_absindex(L, roots);
    int top = lua_gettop(L);
    lua_newtable(L);
    int seen = lua_gettop(L);
    lua_newtable(L);
    int work = lua_gettop(L);
    lua_newtable(L);
    int tables = lua_gettop(L);
    lua_Integer nwork = 0, ntables = 0;
    lua_Integer nroots = (lua_Integer)lua_rawlen(L, roots);
    for (lua_Integer i = 1; i <= nroots; i++) {
        lua_rawgeti(L, roots, i);
        lua_getfield(L, -1, "value");
        int value = lua_gettop(L);
        lua_getfield(L, -2, "kind");
        lua_Integer kind = lua_tointeger(L, -1);
        bool definition = (kind == DECL_FLAG || kind == DECL_ROUTE) && lua_type(L, value) == LUA_TTABLE &&
                          !rs_is_frozen(L, value);
        lua_pop(L, 1);
        if (definition) {
            /* A declaration's definition table is read once, by validation, and then dropped: rules never see
             * it, so what it holds is frozen and it is not (freezing copies a table into three; at 10,000 flags
             * that was a seventh of the build). It is left unseen: if rules can reach it some other way (a
             * file-level table given as the definition), it is frozen when reached that way. */
            lua_pushnil(L);
            while (lua_next(L, value)) {
                push_work(L, work, &nwork, -2, i);
                push_work(L, work, &nwork, -1, i);
                lua_pop(L, 1);
            }
            if (lua_getmetatable(L, value)) {
                push_work(L, work, &nwork, -1, i);
                lua_pop(L, 1);
            }
        } else {
            push_work(L, work, &nwork, value, i);
        }
        lua_pop(L, 2);
    }
    int checked_closures = 0;
    while (nwork > 0) {
        lua_rawgeti(L, work, nwork - 1);
        lua_rawgeti(L, work, nwork);
        lua_Integer origin = lua_tointeger(L, -1);
        lua_pop(L, 1);
        lua_pushnil(L);
        lua_rawseti(L, work, nwork--);
        lua_pushnil(L);
        lua_rawseti(L, work, nwork--);
        int v = lua_gettop(L);
        int t = lua_type(L, v);
        if (t == LUA_TTABLE || t == LUA_TFUNCTION || t == LUA_TTHREAD || t == LUA_TUSERDATA) {
            lua_pushvalue(L, v);
            lua_rawget(L, seen);
            bool was_seen = lua_toboolean(L, -1);
            lua_pop(L, 1);
            if (was_seen) {
                lua_pop(L, 1);
                continue;
            }
            lua_pushvalue(L, v);
            lua_pushboolean(L, 1);
            lua_rawset(L, seen);
        }
        switch (t) {
        case LUA_TTABLE:
            if (rs_is_frozen(L, v)) break; /* frozen with everything it holds, when it was frozen */
            lua_pushnil(L);
            while (lua_next(L, v)) {
                push_work(L, work, &nwork, -2, origin);
                push_work(L, work, &nwork, -1, origin);
                lua_pop(L, 1);
            }
            if (lua_getmetatable(L, v)) {
                push_work(L, work, &nwork, -1, origin);
                lua_pop(L, 1);
            }
            lua_pushvalue(L, v);
            lua_rawseti(L, tables, ++ntables);
            break;
        case LUA_TFUNCTION:
            if (lua_iscfunction(L, v)) {
                if (lua_getupvalue(L, v, 1) != NULL) {
                    lua_pop(L, 1);
                    origin_report(S, L, roots, origin, "an iterator or wrapped coroutine created while loading");
                }
            } else {
                for (int i = 1;; i++) {
                    if (lua_getupvalue(L, v, i) == NULL) break;
                    push_work(L, work, &nwork, -1, origin);
                    lua_pop(L, 1);
                }
                if (checked_closures++ < 100000) rs_check_closure(S, L, v);
            }
            break;
        case LUA_TTHREAD: origin_report(S, L, roots, origin, "a coroutine created while loading"); break;
        case LUA_TUSERDATA:
            /* A data set: read-only C memory behind a hidden metatable, the same for every request. */
            if (rs_is_data_object(L, v)) break;
            origin_report(S, L, roots, origin, "a userdata value");
            break;
        case LUA_TLIGHTUSERDATA: origin_report(S, L, roots, origin, "a userdata value"); break;
        default: break;
        }
        lua_pop(L, 1);
    }
    rs_release_scratch(S);
    for (lua_Integer i = 1; i <= ntables; i++) {
        lua_rawgeti(L, tables, i);
        rs_freeze_table(L, -1);
        lua_pop(L, 1);
    }
    lua_settop(L, top);
}
