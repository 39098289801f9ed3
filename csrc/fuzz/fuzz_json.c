/*
 * fuzz_json.c — libFuzzer harness for the strict JSON reader (csrc/io/json.c).
 *
 * Input: byte 0 selects the options (bit 0: reject duplicate keys; bits 1..7:
 * max_depth 0..127, 0 = default), the rest is the document. Accepted trees are
 * walked and checked: strings are valid UTF-8 and NUL-terminated at len,
 * number texts lie inside the input, integer numbers agree with their double,
 * nesting respects max_depth, and with duplicate rejection no object repeats a
 * key.
 */
#include "eg.h"
#include "eg_json.h"
#include "fuzz_common.h"

#include <math.h>
#include <stdlib.h>

static const char *g_text;
static size_t g_len;

static void walk(const eg_json *v, int depth, int max_depth, unsigned flags)
{
    switch (v->type) {
    case EG_JSON_NULL:
    case EG_JSON_FALSE:
    case EG_JSON_TRUE:
        break;
    case EG_JSON_NUMBER:
        FUZZ_CHECK(v->str >= g_text && v->len > 0 && v->str + v->len <= g_text + g_len,
                   "number text outside the input");
        if (v->is_int) {
            FUZZ_CHECK((double)v->i == v->d || (isfinite(v->d) && fabs((double)v->i - v->d) <= 1.0 + fabs(v->d) * 1e-15),
                       "int %lld vs double %g", (long long)v->i, v->d);
        }
        break;
    case EG_JSON_STRING:
        FUZZ_CHECK(v->str != NULL && v->str[v->len] == '\0', "string not NUL-terminated");
        FUZZ_CHECK(eg_utf8_valid(v->str, v->len, NULL), "string is not valid UTF-8");
        break;
    case EG_JSON_ARRAY:
        FUZZ_CHECK(depth < max_depth, "array nested deeper than %d", max_depth);
        for (size_t k = 0; k < v->n; k++) {
            walk(&v->items[k], depth + 1, max_depth, flags);
        }
        break;
    case EG_JSON_OBJECT:
        FUZZ_CHECK(depth < max_depth, "object nested deeper than %d", max_depth);
        for (size_t k = 0; k < v->n; k++) {
            const eg_json_member *m = &v->members[k];
            FUZZ_CHECK(m->key != NULL && m->key[m->key_len] == '\0', "key not NUL-terminated");
            FUZZ_CHECK(eg_utf8_valid(m->key, m->key_len, NULL), "key is not valid UTF-8");
            if ((flags & EG_JSON_REJECT_DUPLICATE_KEYS) && v->n < 200) {
                for (size_t j = 0; j < k; j++) {
                    FUZZ_CHECK(v->members[j].key_len != m->key_len ||
                                   memcmp(v->members[j].key, m->key, m->key_len) != 0,
                               "duplicate key accepted");
                }
            }
            if (memchr(m->key, '\0', m->key_len) == NULL) {
                /* eg_json_get finds the first member with this key */
                const eg_json *got = eg_json_get(v, m->key);
                FUZZ_CHECK(got != NULL, "eg_json_get misses a key");
            }
            walk(&m->value, depth + 1, max_depth, flags);
        }
        break;
    default:
        FUZZ_CHECK(0, "bad type %d", (int)v->type);
    }
    FUZZ_CHECK(eg_json_type_name(v->type) != NULL, "type name");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) {
        return 0;
    }
    unsigned flags = (data[0] & 1u) ? EG_JSON_REJECT_DUPLICATE_KEYS : 0u;
    int max_depth = data[0] >> 1;
    /* a private copy of exactly the document's size: reads past it are caught */
    size_t len = size - 1;
    char *text = malloc(len > 0 ? len : 1);
    if (text == NULL) {
        return 0;
    }
    memcpy(text, data + 1, len);
    g_text = text;
    g_len = len;
    eg_arena arena;
    eg_arena_init(&arena);
    eg_json *root = NULL;
    eg_err err;
    eg_err_clear(&err);
    eg_status st = eg_json_parse(text, len, &arena, max_depth, flags, &root, &err);
    fuzz_check_status(st, &err);
    if (st == EG_OK) {
        FUZZ_CHECK(root != NULL, "no root");
        walk(root, 0, max_depth == 0 ? EG_JSON_DEFAULT_MAX_DEPTH : max_depth, flags);
    } else {
        FUZZ_CHECK(st == EG_ECORRUPT || st == EG_ENOMEM || st == EG_EINVAL, "status %d", (int)st);
    }
    eg_arena_free(&arena);
    free(text);
    return 0;
}
