/*
 * json.c — the strict JSON reader declared in eg_json.h.
 *
 * Recursive descent over a byte buffer with an explicit depth limit. The
 * children of the container being parsed are collected on two growable
 * scratch stacks (values, object members) and copied into one exact-size
 * arena array when the container closes, so the tree costs one arena
 * allocation per container and per string. Duplicate object keys are found
 * by sorting a temporary index of the keys (n log n), only when asked.
 */
#include "eg_json.h"

#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const unsigned char *s;
    size_t len;
    size_t pos;
    int max_depth;
    unsigned flags;
    eg_arena *arena;
    eg_err *err;
    eg_json *vstack;
    size_t vtop, vcap;
    eg_json_member *mstack;
    size_t mtop, mcap;
} parser;

const char *eg_json_type_name(eg_json_type t)
{
    switch (t) {
    case EG_JSON_NULL: return "null";
    case EG_JSON_FALSE: return "false";
    case EG_JSON_TRUE: return "true";
    case EG_JSON_NUMBER: return "number";
    case EG_JSON_STRING: return "string";
    case EG_JSON_ARRAY: return "array";
    case EG_JSON_OBJECT: return "object";
    }
    return "unknown";
}

/* Length of the UTF-8 sequence starting at s[0] (1..4), or 0 if s[0..len)
 * does not start with a valid, shortest-form, non-surrogate sequence. */
static eg_status fail(parser *p, const char *what)
{
    return eg_seterr(p->err, EG_ECORRUPT, "invalid JSON at byte %zu: %s", p->pos, what);
}

static void skip_ws(parser *p)
{
    while (p->pos < p->len) {
        unsigned char c = p->s[p->pos];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            p->pos++;
        } else {
            break;
        }
    }
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

static int read_hex4(parser *p, uint32_t *out)
{
    if (p->len - p->pos < 4) {
        return -1;
    }
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
        int h = hexval(p->s[p->pos + k]);
        if (h < 0) {
            return -1;
        }
        v = (v << 4) | (uint32_t)h;
    }
    p->pos += 4;
    *out = v;
    return 0;
}

/* p->pos is at the opening quote. Two passes: validate and measure, then
 * decode into an arena buffer (escapes never grow the text: \uXXXX is six
 * bytes for at most three, a surrogate pair twelve for four). */
static eg_status parse_string(parser *p, const char **out, size_t *out_len)
{
    p->pos++; /* opening quote */
    size_t start = p->pos;
    size_t end = start;
    /* pass 1: find the closing quote, validating as we go */
    for (;;) {
        if (end >= p->len) {
            p->pos = end;
            return fail(p, "unterminated string");
        }
        unsigned char c = p->s[end];
        if (c == '"') {
            break;
        }
        if (c < 0x20) {
            p->pos = end;
            return fail(p, "control character in string (must be escaped)");
        }
        if (c == '\\') {
            if (end + 1 >= p->len) {
                p->pos = end;
                return fail(p, "unterminated escape");
            }
            unsigned char e = p->s[end + 1];
            if (e == 'u') {
                end += 2; /* hex digits are checked in pass 2 */
                continue;
            }
            if (e != '"' && e != '\\' && e != '/' && e != 'b' && e != 'f' && e != 'n' &&
                e != 'r' && e != 't') {
                p->pos = end;
                return fail(p, "invalid escape");
            }
            end += 2;
            continue;
        }
        uint32_t cp;
        size_t n = eg_utf8_decode1(p->s + end, p->len - end, &cp);
        if (n == 0) {
            p->pos = end;
            return fail(p, "invalid UTF-8 in string");
        }
        end += n;
    }
    size_t raw = end - start;
    size_t cap;
    if (eg_add_ovf(raw, 1, &cap)) {
        return eg_seterr(p->err, EG_EOVERFLOW, "JSON string too long");
    }
    unsigned char *d = eg_arena_alloc(p->arena, cap);
    if (d == NULL) {
        return eg_seterr(p->err, EG_ENOMEM, "out of memory parsing JSON string of %zu bytes", raw);
    }
    size_t k = 0;
    p->pos = start;
    while (p->pos < end) {
        unsigned char c = p->s[p->pos];
        if (c != '\\') {
            d[k++] = c;
            p->pos++;
            continue;
        }
        unsigned char e = p->s[p->pos + 1];
        p->pos += 2;
        switch (e) {
        case '"': d[k++] = '"'; break;
        case '\\': d[k++] = '\\'; break;
        case '/': d[k++] = '/'; break;
        case 'b': d[k++] = '\b'; break;
        case 'f': d[k++] = '\f'; break;
        case 'n': d[k++] = '\n'; break;
        case 'r': d[k++] = '\r'; break;
        case 't': d[k++] = '\t'; break;
        default: { /* 'u' */
            uint32_t cp;
            if (p->pos > end || read_hex4(p, &cp) < 0 || p->pos > end) {
                return fail(p, "\\u escape needs four hex digits");
            }
            if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return fail(p, "lone low surrogate in \\u escape");
            }
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                uint32_t lo;
                if (end - p->pos < 6 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u') {
                    return fail(p, "high surrogate not followed by a \\u low surrogate");
                }
                p->pos += 2;
                if (read_hex4(p, &lo) < 0 || lo < 0xDC00 || lo > 0xDFFF) {
                    return fail(p, "high surrogate not followed by a low surrogate");
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            k += eg_utf8_encode1(cp, d + k); /* cp is never a surrogate here */
            break;
        }
        }
    }
    d[k] = '\0';
    p->pos = end + 1; /* closing quote */
    *out = (const char *)d;
    *out_len = k;
    return EG_OK;
}

/* strtod honours LC_NUMERIC; JSON always uses '.'. If the current locale's
 * decimal point differs, rewrite the '.' to it before converting. */
static double parse_double(char *text)
{
    struct lconv *lc = localeconv();
    const char *dp = lc != NULL ? lc->decimal_point : NULL;
    if (dp != NULL && dp[0] != '\0' && dp[0] != '.' && dp[1] == '\0') {
        char *dot = strchr(text, '.');
        if (dot != NULL) {
            *dot = dp[0];
        }
    }
    return strtod(text, NULL);
}

static eg_status parse_number(parser *p, eg_json *v)
{
    size_t start = p->pos;
    const unsigned char *s = p->s;
    int neg = 0, integral = 1, fits = 1;
    uint64_t mag = 0;
    if (p->pos < p->len && s[p->pos] == '-') {
        neg = 1;
        p->pos++;
    }
    if (p->pos >= p->len || s[p->pos] < '0' || s[p->pos] > '9') {
        return fail(p, "invalid number");
    }
    if (s[p->pos] == '0') {
        p->pos++;
        if (p->pos < p->len && s[p->pos] >= '0' && s[p->pos] <= '9') {
            return fail(p, "leading zero in number");
        }
    } else {
        while (p->pos < p->len && s[p->pos] >= '0' && s[p->pos] <= '9') {
            uint64_t dgt = (uint64_t)(s[p->pos] - '0');
            if (__builtin_mul_overflow(mag, (uint64_t)10, &mag) ||
                __builtin_add_overflow(mag, dgt, &mag)) {
                fits = 0;
            }
            p->pos++;
        }
    }
    if (p->pos < p->len && s[p->pos] == '.') {
        integral = 0;
        p->pos++;
        if (p->pos >= p->len || s[p->pos] < '0' || s[p->pos] > '9') {
            return fail(p, "digit expected after decimal point");
        }
        while (p->pos < p->len && s[p->pos] >= '0' && s[p->pos] <= '9') {
            p->pos++;
        }
    }
    if (p->pos < p->len && (s[p->pos] == 'e' || s[p->pos] == 'E')) {
        integral = 0;
        p->pos++;
        if (p->pos < p->len && (s[p->pos] == '+' || s[p->pos] == '-')) {
            p->pos++;
        }
        if (p->pos >= p->len || s[p->pos] < '0' || s[p->pos] > '9') {
            return fail(p, "digit expected in exponent");
        }
        while (p->pos < p->len && s[p->pos] >= '0' && s[p->pos] <= '9') {
            p->pos++;
        }
    }
    size_t n = p->pos - start;
    v->type = EG_JSON_NUMBER;
    v->str = (const char *)s + start;
    v->len = n;
    v->is_int = 0;
    v->i = 0;
    if (integral && fits && mag <= (uint64_t)INT64_MAX + (neg ? 1u : 0u)) {
        /* exact int64; its double is the correctly rounded conversion */
        v->is_int = 1;
        v->i = neg ? (mag == (uint64_t)INT64_MAX + 1u ? INT64_MIN : -(int64_t)mag) : (int64_t)mag;
        v->d = (neg && mag == 0) ? -0.0 : (double)v->i;
        return EG_OK;
    }
    /* strtod needs a NUL-terminated copy; JSON numbers are short in
     * practice, long ones go through a temporary heap copy. */
    char small[64];
    char *text = n < sizeof small ? small : malloc(n + 1);
    if (text == NULL) {
        return eg_seterr(p->err, EG_ENOMEM, "out of memory parsing JSON number");
    }
    memcpy(text, s + start, n);
    text[n] = '\0';
    v->d = parse_double(text);
    if (text != small) {
        free(text);
    }
    return EG_OK;
}

static int key_cmp(const void *a, const void *b)
{
    const eg_json_member *x = *(const eg_json_member *const *)a;
    const eg_json_member *y = *(const eg_json_member *const *)b;
    size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
    int c = memcmp(x->key, y->key, n);
    if (c != 0) {
        return c;
    }
    return x->key_len < y->key_len ? -1 : (x->key_len > y->key_len ? 1 : 0);
}

static eg_status push_value(parser *p, const eg_json *v)
{
    if (p->vtop == p->vcap) {
        size_t cap = p->vcap ? p->vcap * 2 : 64;
        eg_json *ns = cap > SIZE_MAX / sizeof *ns ? NULL : realloc(p->vstack, cap * sizeof *ns);
        if (ns == NULL) {
            return eg_seterr(p->err, EG_ENOMEM, "out of memory parsing JSON array");
        }
        p->vstack = ns;
        p->vcap = cap;
    }
    p->vstack[p->vtop++] = *v;
    return EG_OK;
}

static eg_status push_member(parser *p, const eg_json_member *m)
{
    if (p->mtop == p->mcap) {
        size_t cap = p->mcap ? p->mcap * 2 : 64;
        eg_json_member *ns = cap > SIZE_MAX / sizeof *ns ? NULL : realloc(p->mstack, cap * sizeof *ns);
        if (ns == NULL) {
            return eg_seterr(p->err, EG_ENOMEM, "out of memory parsing JSON object");
        }
        p->mstack = ns;
        p->mcap = cap;
    }
    p->mstack[p->mtop++] = *m;
    return EG_OK;
}

static eg_status parse_value(parser *p, eg_json *v, int depth);

static eg_status check_duplicates(parser *p, const eg_json_member *ms, size_t n, size_t obj_pos)
{
    if (n < 2) {
        return EG_OK;
    }
    const eg_json_member **idx = malloc(n * sizeof *idx);
    if (idx == NULL) {
        return eg_seterr(p->err, EG_ENOMEM, "out of memory checking JSON keys");
    }
    for (size_t k = 0; k < n; k++) {
        idx[k] = &ms[k];
    }
    qsort(idx, n, sizeof *idx, key_cmp);
    eg_status st = EG_OK;
    for (size_t k = 1; k < n; k++) {
        if (key_cmp(&idx[k - 1], &idx[k]) == 0) {
            st = eg_seterr(p->err, EG_ECORRUPT,
                           "invalid JSON: duplicate key \"%.200s\" in the object at byte %zu",
                           idx[k]->key, obj_pos);
            break;
        }
    }
    free(idx);
    return st;
}

static eg_status parse_object(parser *p, eg_json *v, int depth)
{
    size_t obj_pos = p->pos;
    size_t base = p->mtop;
    eg_status st;
    p->pos++; /* { */
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == '}') {
        p->pos++;
    } else {
        for (;;) {
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != '"') {
                return fail(p, "object key (a string) expected");
            }
            eg_json_member m;
            memset(&m, 0, sizeof m);
            if ((st = parse_string(p, &m.key, &m.key_len)) != EG_OK) {
                return st;
            }
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != ':') {
                return fail(p, "':' expected after object key");
            }
            p->pos++;
            if ((st = parse_value(p, &m.value, depth + 1)) != EG_OK) {
                return st;
            }
            if ((st = push_member(p, &m)) != EG_OK) {
                return st;
            }
            skip_ws(p);
            if (p->pos < p->len && p->s[p->pos] == ',') {
                p->pos++;
                continue;
            }
            if (p->pos < p->len && p->s[p->pos] == '}') {
                p->pos++;
                break;
            }
            return fail(p, "',' or '}' expected in object");
        }
    }
    size_t n = p->mtop - base;
    v->type = EG_JSON_OBJECT;
    v->n = n;
    v->members = NULL;
    if (n > 0) {
        v->members = eg_arena_alloc_n(p->arena, n, sizeof *v->members);
        if (v->members == NULL) {
            return eg_seterr(p->err, EG_ENOMEM, "out of memory parsing JSON object");
        }
        memcpy(v->members, p->mstack + base, n * sizeof *v->members);
    }
    p->mtop = base;
    if (p->flags & EG_JSON_REJECT_DUPLICATE_KEYS) {
        return check_duplicates(p, v->members, n, obj_pos);
    }
    return EG_OK;
}

static eg_status parse_array(parser *p, eg_json *v, int depth)
{
    size_t base = p->vtop;
    eg_status st;
    p->pos++; /* [ */
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == ']') {
        p->pos++;
    } else {
        for (;;) {
            eg_json item;
            if ((st = parse_value(p, &item, depth + 1)) != EG_OK) {
                return st;
            }
            if ((st = push_value(p, &item)) != EG_OK) {
                return st;
            }
            skip_ws(p);
            if (p->pos < p->len && p->s[p->pos] == ',') {
                p->pos++;
                continue;
            }
            if (p->pos < p->len && p->s[p->pos] == ']') {
                p->pos++;
                break;
            }
            return fail(p, "',' or ']' expected in array");
        }
    }
    size_t n = p->vtop - base;
    v->type = EG_JSON_ARRAY;
    v->n = n;
    v->items = NULL;
    if (n > 0) {
        v->items = eg_arena_alloc_n(p->arena, n, sizeof *v->items);
        if (v->items == NULL) {
            return eg_seterr(p->err, EG_ENOMEM, "out of memory parsing JSON array");
        }
        memcpy(v->items, p->vstack + base, n * sizeof *v->items);
    }
    p->vtop = base;
    return EG_OK;
}

static int match_word(parser *p, const char *w)
{
    size_t n = strlen(w);
    if (p->len - p->pos >= n && memcmp(p->s + p->pos, w, n) == 0) {
        p->pos += n;
        return 1;
    }
    return 0;
}

static eg_status parse_value(parser *p, eg_json *v, int depth)
{
    memset(v, 0, sizeof *v);
    skip_ws(p);
    if (p->pos >= p->len) {
        return fail(p, "unexpected end of input, value expected");
    }
    unsigned char c = p->s[p->pos];
    if (c == '{' || c == '[') {
        if (depth >= p->max_depth) {
            return fail(p, "nesting deeper than the limit");
        }
        return c == '{' ? parse_object(p, v, depth) : parse_array(p, v, depth);
    }
    if (c == '"') {
        v->type = EG_JSON_STRING;
        return parse_string(p, &v->str, &v->len);
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        return parse_number(p, v);
    }
    if (match_word(p, "true")) {
        v->type = EG_JSON_TRUE;
        return EG_OK;
    }
    if (match_word(p, "false")) {
        v->type = EG_JSON_FALSE;
        return EG_OK;
    }
    if (match_word(p, "null")) {
        v->type = EG_JSON_NULL;
        return EG_OK;
    }
    return fail(p, "unexpected character, value expected");
}

eg_status eg_json_parse(const char *text, size_t len, eg_arena *arena, int max_depth,
                        unsigned flags, eg_json **out, eg_err *err)
{
    parser p;
    memset(&p, 0, sizeof p);
    p.s = (const unsigned char *)text;
    p.len = text != NULL ? len : 0;
    p.max_depth = max_depth > 0 ? max_depth : EG_JSON_DEFAULT_MAX_DEPTH;
    p.flags = flags;
    p.arena = arena;
    p.err = err;
    *out = NULL;
    eg_json *root = eg_arena_alloc(arena, sizeof *root);
    if (root == NULL) {
        return eg_seterr(err, EG_ENOMEM, "out of memory parsing JSON");
    }
    eg_status st = parse_value(&p, root, 0);
    if (st == EG_OK) {
        skip_ws(&p);
        if (p.pos != p.len) {
            st = fail(&p, "trailing characters after the JSON value");
        }
    }
    free(p.vstack);
    free(p.mstack);
    if (st == EG_OK) {
        *out = root;
    }
    return st;
}

const eg_json *eg_json_get(const eg_json *obj, const char *key)
{
    if (obj == NULL || obj->type != EG_JSON_OBJECT) {
        return NULL;
    }
    size_t n = strlen(key);
    for (size_t k = 0; k < obj->n; k++) {
        if (obj->members[k].key_len == n && memcmp(obj->members[k].key, key, n) == 0) {
            return &obj->members[k].value;
        }
    }
    return NULL;
}
