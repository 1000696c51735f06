/*
 * rule_data.h - data files (`data "name"` in rule files): immutable sets and maps built once per rule set.
 *
 * A data set is parsed from a `.txt` list or a `.json` array or object, then never changes. It lives outside
 * every Lua allocator and is shared read-only by the Lua states of all workers; its reference count is atomic,
 * so any thread may retain or release it. Lookups hash the key once and cost O(1).
 */
#ifndef RULESD_RULE_DATA_H
#define RULESD_RULE_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "rule_sandbox.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rs_data rs_data;

/** The kinds of data files, by file name ending. */
typedef enum rs_data_format {
    RS_DATA_TEXT = 0, /**< `.txt`: one entry per line, `#` comment lines, blank lines ignored, whitespace trimmed */
    RS_DATA_JSON = 1, /**< `.json`: an array of strings (a set) or an object of scalars (a map) */
} rs_data_format;

/**
 * Parses a data file into a set or map.
 * @param error_line receives the 1-based line of the problem on failure (0 when the problem is the whole file).
 * @return a data set holding one reference, or NULL with `error` describing the problem.
 */
rs_data *rs_data_parse(int format, const char *bytes, size_t length, int32_t *error_line, char *error,
                       size_t error_cap);
/** Adds a reference (any thread). */
void rs_data_retain(rs_data *D);
/** Drops a reference (any thread); the last one frees the data set. */
void rs_data_release(rs_data *D);
/** Distinct entries (set members or map keys). */
size_t rs_data_entries(const rs_data *D);
/** Bytes held: keys, values and the hash index. */
uint64_t rs_data_bytes(const rs_data *D);
/** 1 for a map (a JSON object), 0 for a set. */
int rs_data_is_map(const rs_data *D);
/** Whether `key` is a member (sets) or a key (maps). */
int rs_data_contains(const rs_data *D, const char *key, size_t length);

/**
 * Offers a data file found in the rules directory to `data "name"` while files load; the bytes are copied
 * and parsed only if a rule file asks for the file. Offer every data file before loading rule files.
 * @param relative_path the file's path relative to the rules directory, ending in `.txt` or `.json`.
 * @return 0, or -1 when out of memory.
 */
int rs_state_offer_data_file(rs_state *S, const char *relative_path, const char *bytes, size_t length);

/**
 * Offers a data set already built for the same rule set by another state (one per worker): `data "name"` then
 * shares it instead of parsing again. The state takes a reference of its own.
 * @return 0, or -1 when out of memory.
 */
int rs_state_offer_data_set(rs_state *S, const char *relative_path, rs_data *D);

/** A data file the rule files used, with the data set built from it. Valid until the state is freed. */
typedef struct rs_data_info {
    const char *name; /**< as the rules wrote it: `beta-users`, `lists/beta` */
    const char *path; /**< the file: `beta-users.txt` */
    rs_data *data;    /**< borrowed: rs_data_retain it to keep it past the state */
} rs_data_info;

/** The data files the rule files used, in the order they were first asked for. */
size_t rs_state_data_count(const rs_state *S);
rs_data_info rs_state_data_at(const rs_state *S, size_t index);

#ifdef __cplusplus
}
#endif
#endif
