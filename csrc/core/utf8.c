/*
 * utf8.c — strict UTF-8 decoding and encoding (RFC 3629): no overlong forms,
 * no surrogates, nothing above U+10FFFF, no truncated sequences. Shared by
 * the JSON reader (safetensors headers) and the tokenizer, neither of which
 * trusts its input to be valid.
 */
#include "eg.h"

size_t eg_utf8_decode1(const uint8_t *s, size_t n, uint32_t *cp)
{
    if (n == 0) {
        return 0;
    }
    uint8_t b0 = s[0];
    if (b0 < 0x80u) {
        *cp = b0;
        return 1;
    }
    size_t len;
    uint32_t c, min;
    if (b0 >= 0xC2u && b0 <= 0xDFu) {
        len = 2;
        c = b0 & 0x1Fu;
        min = 0x80u;
    } else if (b0 >= 0xE0u && b0 <= 0xEFu) {
        len = 3;
        c = b0 & 0x0Fu;
        min = 0x800u;
    } else if (b0 >= 0xF0u && b0 <= 0xF4u) {
        len = 4;
        c = b0 & 0x07u;
        min = 0x10000u;
    } else {
        return 0; /* continuation byte, C0/C1 (always overlong), F5..FF */
    }
    if (n < len) {
        return 0;
    }
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0u) != 0x80u) {
            return 0;
        }
        c = (c << 6) | (s[i] & 0x3Fu);
    }
    if (c < min || c > 0x10FFFFu || (c >= 0xD800u && c <= 0xDFFFu)) {
        return 0;
    }
    *cp = c;
    return len;
}

size_t eg_utf8_encode1(uint32_t cp, uint8_t out[4])
{
    if (cp < 0x80u) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800u) {
        out[0] = (uint8_t)(0xC0u | (cp >> 6));
        out[1] = (uint8_t)(0x80u | (cp & 0x3Fu));
        return 2;
    }
    if (cp >= 0xD800u && cp <= 0xDFFFu) {
        return 0;
    }
    if (cp < 0x10000u) {
        out[0] = (uint8_t)(0xE0u | (cp >> 12));
        out[1] = (uint8_t)(0x80u | ((cp >> 6) & 0x3Fu));
        out[2] = (uint8_t)(0x80u | (cp & 0x3Fu));
        return 3;
    }
    if (cp <= 0x10FFFFu) {
        out[0] = (uint8_t)(0xF0u | (cp >> 18));
        out[1] = (uint8_t)(0x80u | ((cp >> 12) & 0x3Fu));
        out[2] = (uint8_t)(0x80u | ((cp >> 6) & 0x3Fu));
        out[3] = (uint8_t)(0x80u | (cp & 0x3Fu));
        return 4;
    }
    return 0;
}

int eg_utf8_valid(const char *s, size_t n, size_t *bad_at)
{
    const uint8_t *u = (const uint8_t *)s;
    size_t i = 0;
    while (i < n) {
        if (u[i] < 0x80u) {
            i++;
            continue;
        }
        uint32_t cp;
        size_t k = eg_utf8_decode1(u + i, n - i, &cp);
        if (k == 0) {
            if (bad_at != NULL) {
                *bad_at = i;
            }
            return 0;
        }
        i += k;
    }
    return 1;
}
