/*
 * eg_json.h — a small strict JSON reader (RFC 8259) for file headers and
 * config files: safetensors headers, the layer cache manifest, tokenizer
 * configs.
 *
 * The whole document is parsed into a tree of eg_json values allocated from a
 * caller-owned arena; the tree lives until the arena is reset or freed. The
 * reader is strict: UTF-8 is validated (no overlongs, no surrogates, nothing
 * above U+10FFFF), control characters inside strings are rejected, \uXXXX
 * escapes are decoded (surrogate pairs combined, lone surrogates rejected),
 * nesting is limited, and nothing but whitespace may follow the value.
 * Numbers keep their text, a double, and an exact int64 when the number is
 * written as an integer (no fraction, no exponent) that fits in int64.
 */
#ifndef EG_JSON_H
#define EG_JSON_H

#include "eg.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    EG_JSON_NULL = 0,
    EG_JSON_FALSE,
    EG_JSON_TRUE,
    EG_JSON_NUMBER,
    EG_JSON_STRING,
    EG_JSON_ARRAY,
    EG_JSON_OBJECT
} eg_json_type;

typedef struct eg_json eg_json;
typedef struct eg_json_member eg_json_member;

struct eg_json {
    eg_json_type type;
    /* NUMBER: `is_int` is 1 when the text is an integer literal that fits in
     * int64 (then `i` holds it exactly); `d` always holds the nearest double
     * (parsed in the C locale's format, as JSON requires). */
    int is_int;
    int64_t i;
    double d;
    /* The two views below share storage (40-byte values keep big headers
     * cheap); which one is meaningful depends on `type`. */
    union {
        /* STRING: decoded UTF-8, NUL-terminated, `len` bytes (may contain
         * NUL bytes from \u0000), in the arena. NUMBER: the literal's text,
         * pointing INTO THE INPUT (not NUL-terminated; valid while the input
         * is). */
        struct {
            const char *str;
            size_t len;
        };
        /* ARRAY: `n` values in `items`. OBJECT: `n` members in `members`,
         * in document order. */
        struct {
            size_t n;
            union {
                eg_json *items;
                eg_json_member *members;
            };
        };
    };
};

struct eg_json_member {
    const char *key;    /* decoded UTF-8, NUL-terminated */
    size_t key_len;
    eg_json value;
};

/* Parse options (bit flags). */
#define EG_JSON_REJECT_DUPLICATE_KEYS 1u

#define EG_JSON_DEFAULT_MAX_DEPTH 64

/* Parse `len` bytes of `text` (not necessarily NUL-terminated) into a tree
 * allocated from `arena`. `max_depth` bounds nesting (arrays/objects; 0 means
 * EG_JSON_DEFAULT_MAX_DEPTH). On success *out points at the root value.
 * Returns EG_ECORRUPT with a message giving the byte offset and the rule
 * broken, or EG_ENOMEM. On failure the arena may hold partial allocations
 * (freed with the arena). */
eg_status eg_json_parse(const char *text, size_t len, eg_arena *arena, int max_depth,
                        unsigned flags, eg_json **out, eg_err *err);

/* The value of member `key` in object `obj`, or NULL (also when obj is not an
 * object). Linear scan; the first match wins. */
const eg_json *eg_json_get(const eg_json *obj, const char *key);



const char *eg_json_type_name(eg_json_type t);

#ifdef __cplusplus
}
#endif
#endif /* EG_JSON_H */
