/*
 * test_json.c — the strict JSON reader: values, numbers, escapes and UTF-8,
 * and a rejection test for every rule. Each input is copied into an exact-size
 * heap buffer (no NUL after it) so ASan catches any read past the end.
 */
#include "eg.h"
#include "eg_json.h"
#include "eg_test.h"

#include <locale.h>
#include <stdlib.h>
#include <string.h>

static eg_arena arena;

static eg_status parse_n(const char *s, size_t n, unsigned flags, int depth, eg_json **out, eg_err *err)
{
    char *buf = malloc(n > 0 ? n : 1);
    memcpy(buf, s, n);
    eg_arena_reset(&arena);
    eg_err_clear(err);
    eg_status st = eg_json_parse(buf, n, &arena, depth, flags, out, err);
    free(buf);
    return st;
}

static eg_status parse(const char *s, eg_json **out, eg_err *err)
{
    return parse_n(s, strlen(s), EG_JSON_REJECT_DUPLICATE_KEYS, 0, out, err);
}

static void test_values(void)
{
    eg_json *v;
    eg_err err;
    const char *doc = " {\"a\": [1, -2, 3.5, 1e3, true, false, null], \"b\": {\"c\": \"d\"}, \"\": \"\"} \n";
    CHECK(parse(doc, &v, &err) == EG_OK, "valid doc: %s", err.msg);
    /* the parse buffer is freed, but strings live in the arena */
    CHECK(v->type == EG_JSON_OBJECT && v->n == 3, "object of 3");
    const eg_json *a = eg_json_get(v, "a");
    CHECK(a != NULL && a->type == EG_JSON_ARRAY && a->n == 7, "array of 7");
    CHECK(a->items[0].is_int && a->items[0].i == 1, "int 1");
    CHECK(a->items[1].is_int && a->items[1].i == -2, "int -2");
    CHECK(!a->items[2].is_int && a->items[2].d == 3.5, "float 3.5");
    CHECK(!a->items[3].is_int && a->items[3].d == 1000.0, "1e3 is not an integer literal");
    CHECK(a->items[4].type == EG_JSON_TRUE && a->items[5].type == EG_JSON_FALSE && a->items[6].type == EG_JSON_NULL,
          "literals");
    const eg_json *c = eg_json_get(eg_json_get(v, "b"), "c");
    CHECK(c != NULL && c->type == EG_JSON_STRING && strcmp(c->str, "d") == 0, "nested string");
    CHECK(eg_json_get(v, "") != NULL, "empty key");
    CHECK(eg_json_get(v, "zz") == NULL, "missing key");
    CHECK(eg_json_get(a, "a") == NULL, "get on an array");
    CHECK(strcmp(v->members[0].key, "a") == 0 && strcmp(v->members[2].key, "") == 0, "document order");

    CHECK(parse("9223372036854775807", &v, &err) == EG_OK && v->is_int && v->i == INT64_MAX, "int64 max");
    CHECK(parse("-9223372036854775808", &v, &err) == EG_OK && v->is_int && v->i == INT64_MIN, "int64 min");
    CHECK(parse("9223372036854775808", &v, &err) == EG_OK && !v->is_int, "above int64: not an int");
    CHECK(parse("18446744073709551616", &v, &err) == EG_OK && !v->is_int, "above uint64: not an int");
    CHECK(parse("-0", &v, &err) == EG_OK && v->is_int && v->i == 0, "-0");
    CHECK(parse("[]", &v, &err) == EG_OK && v->type == EG_JSON_ARRAY && v->n == 0, "empty array");
    CHECK(parse("{}", &v, &err) == EG_OK && v->type == EG_JSON_OBJECT && v->n == 0, "empty object");

    /* escapes */
    CHECK(parse("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", &v, &err) == EG_OK && v->len == 8 &&
          memcmp(v->str, "\"\\/\b\f\n\r\t", 8) == 0, "simple escapes");
    CHECK(parse("\"\\u00e9\\u20AC\"", &v, &err) == EG_OK && v->len == 5 &&
          memcmp(v->str, "\xc3\xa9\xe2\x82\xac", 5) == 0, "BMP escapes");
    CHECK(parse("\"\\ud83d\\ude00\"", &v, &err) == EG_OK && v->len == 4 &&
          memcmp(v->str, "\xf0\x9f\x98\x80", 4) == 0, "surrogate pair");
    CHECK(parse_n("\"a\\u0000b\"", 10, 0, 0, &v, &err) == EG_OK && v->len == 3 && v->str[1] == '\0',
          "\\u0000 kept with its length");
    CHECK(parse("\"\xf0\x9f\x98\x80 \xe2\x82\xac\"", &v, &err) == EG_OK && v->len == 8, "raw UTF-8");

    /* duplicate keys: rejected only when asked */
    CHECK(parse_n("{\"a\":1,\"a\":2}", 13, 0, 0, &v, &err) == EG_OK, "duplicates allowed without the flag");
    CHECK(parse("{\"a\":1,\"b\":{\"x\":1,\"x\":2}}", &v, &err) == EG_ECORRUPT &&
          strstr(err.msg, "duplicate key") != NULL, "nested duplicate: %s", err.msg);

    /* depth */
    char deep[200];
    for (int k = 0; k < 100; k++) {
        deep[k] = '[';
        deep[199 - k] = ']';
    }
    CHECK(parse_n(deep, 200, 0, 0, &v, &err) == EG_ECORRUPT && strstr(err.msg, "nesting") != NULL,
          "depth 100 > default 64: %s", err.msg);
    CHECK(parse_n(deep, 200, 0, 100, &v, &err) == EG_OK, "depth 100 with limit 100");
    CHECK(parse_n(deep + 1, 198, 0, 98, &v, &err) == EG_ECORRUPT, "depth 99 with limit 98");
}

static void test_rejects(void)
{
    static const char *bad[] = {
        "", " ", "{", "}", "[", "[1,]", "[,1]", "{\"a\":1,}", "{\"a\" 1}", "{\"a\":}", "{1:2}", "{a:1}",
        "[1 2]", "01", "-01", "1.", ".5", "-", "+1", "1e", "1e+", "0x10", "NaN", "Infinity", "tru", "nul",
        "True", "'a'", "\"abc", "\"\\x\"", "\"\\u12\"", "\"\\u12G4\"", "\"\\ud800\"", "\"\\udc00\"",
        "\"\\ud800\\u0041\"", "\"\\ud800x\"", "\"a\x01\"", "\"a\nb\"", "\"\xc0\x80\"", "\"\xed\xa0\x80\"",
        "\"\xf4\x90\x80\x80\"", "\"\xff\"", "\"\xe2\x82\"", "\"\x80\"", "{} x", "{}{}", "1 2", "[1]]",
        "\"\\", "\"\\u", "\xef\xbb\xbf{}", "{\"a\":1}\x00",
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        eg_json *v = (eg_json *)1;
        eg_err err;
        size_t n = strlen(bad[k]);
        if (k == sizeof bad / sizeof bad[0] - 1) {
            n += 1; /* include the NUL byte */
        }
        eg_status st = parse_n(bad[k], n, EG_JSON_REJECT_DUPLICATE_KEYS, 0, &v, &err);
        CHECK(st == EG_ECORRUPT && v == NULL && strstr(err.msg, "JSON") != NULL,
              "bad input %zu (%s) must be rejected: st=%d msg=%s", k, bad[k], (int)st, err.msg);
    }
    /* every proper prefix of an object is rejected */
    const char *doc = "{\"k\": [1, 2.5, \"\\u00e9\\ud83d\\ude00\", {\"x\": null}], \"m\": \"\xe2\x82\xac\"}";
    size_t n = strlen(doc);
    int all = 1;
    for (size_t cut = 0; cut < n; cut++) {
        eg_json *v;
        eg_err err;
        if (parse_n(doc, cut, 0, 0, &v, &err) != EG_ECORRUPT) {
            all = 0;
            fprintf(stderr, "prefix %zu accepted\n", cut);
        }
    }
    CHECK(all, "all prefixes rejected");
    eg_json *v;
    eg_err err;
    CHECK(parse_n(doc, n, 0, 0, &v, &err) == EG_OK, "whole doc accepted: %s", err.msg);
}

static void test_number_text_and_locale(void)
{
    const char *doc = "[3.5, -12, 1e-2, 123456789012345678901234567890]";
    eg_json *v;
    eg_err err;
    eg_arena_reset(&arena);
    CHECK(eg_json_parse(doc, strlen(doc), &arena, 0, 0, &v, &err) == EG_OK, "numbers: %s", err.msg);
    CHECK(v->items[0].str == doc + 1 && v->items[0].len == 3, "number text points into the input");
    CHECK(v->items[1].is_int && v->items[1].i == -12 && v->items[1].d == -12.0, "int and its double");
    CHECK(v->items[2].d == 0.01, "1e-2");
    CHECK(!v->items[3].is_int && v->items[3].len == 30 && v->items[3].d > 1.2e29 && v->items[3].d < 1.3e29,
          "long integer: text kept, double approximated");
    CHECK(eg_json_parse("-0", 2, &arena, 0, 0, &v, &err) == EG_OK && v->is_int && signbit(v->d), "-0.0");
    /* a comma-decimal locale must not change how JSON numbers parse */
    const char *locs[] = {"de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8", "C.UTF-8"};
    for (size_t k = 0; k < sizeof locs / sizeof locs[0]; k++) {
        if (setlocale(LC_NUMERIC, locs[k]) != NULL) {
            CHECK(eg_json_parse("2.5", 3, &arena, 0, 0, &v, &err) == EG_OK && v->d == 2.5,
                  "2.5 under locale %s: %g", locs[k], v->d);
        }
    }
    setlocale(LC_NUMERIC, "C");
}

static void test_utf8(void)
{
    CHECK(eg_utf8_valid("", 0, NULL), "empty");
    CHECK(eg_utf8_valid("a\xc3\xa9\xf4\x8f\xbf\xbf", 7, NULL), "U+10FFFF ok");
    CHECK(!eg_utf8_valid("\xf4\x90\x80\x80", 4, NULL), "above U+10FFFF");
    CHECK(!eg_utf8_valid("\xe0\x80\xaf", 3, NULL), "overlong 3-byte");
    CHECK(!eg_utf8_valid("\xc1\xbf", 2, NULL), "overlong 2-byte");
    CHECK(!eg_utf8_valid("\xed\xbf\xbf", 3, NULL), "surrogate");
    CHECK(!eg_utf8_valid("\xc3", 1, NULL), "truncated");
    CHECK(!eg_utf8_valid("\xf8\x88\x80\x80\x80", 5, NULL), "5-byte form");
}

int main(void)
{
    eg_arena_init(&arena);
    test_values();
    test_rejects();
    test_number_text_and_locale();
    test_utf8();
    eg_arena_free(&arena);
    return eg_test_report("test_json");
}
