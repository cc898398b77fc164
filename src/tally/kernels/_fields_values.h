/* The values of _fields.c: each reader takes the plain form of a value, or answers -1 (the
 * value then goes the general way, see _fields.c). */

#ifndef TALLY_FIELDS_VALUES_H
#define TALLY_FIELDS_VALUES_H

#include <locale.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const int64_t POW10[19] = {
    1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000,
    10000000000LL, 100000000000LL, 1000000000000LL, 10000000000000LL, 100000000000000LL,
    1000000000000000LL, 10000000000000000LL, 100000000000000000LL, 1000000000000000000LL,
};

#if defined(__GLIBC__) || defined(__APPLE__) || defined(__FreeBSD__)
#define HAVE_STRTOD_L 1
static locale_t c_locale; /* strtod must not follow the process's LC_NUMERIC */
#else
#define HAVE_STRTOD_L 0
#endif

/* -- values ------------------------------------------------------------------------------- */

static inline int is_digit(uint8_t c) { return (unsigned)(c - '0') <= 9; }

/* [-]digits, at most 18 of them. */
static inline int read_int(const uint8_t *p, size_t n, int64_t *out) {
    int neg = n && *p == '-';
    p += neg;
    n -= (size_t)neg;
    if (n == 0 || n > 18) return -1;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_digit(p[i])) return -1;
        v = v * 10 + (p[i] - '0');
    }
    *out = neg ? -v : v;
    return 0;
}

/* [-]digits[.digits] with at most `scale` decimals and `precision` <= 18 digits in all,
 * as the integer value * 10^scale. */
static inline int read_decimal(const uint8_t *p, size_t n, int precision, int scale,
                               int64_t *out) {
    int neg = n && *p == '-';
    size_t i = (size_t)neg;
    int64_t v = 0;
    int digits = 0, decimals = 0;
    while (i < n && is_digit(p[i])) {
        if (++digits + scale > precision) return -1;
        v = v * 10 + (p[i++] - '0');
    }
    if (digits == 0) return -1;
    if (i < n) {
        if (p[i++] != '.' || i == n) return -1;
        while (i < n && is_digit(p[i])) {
            if (++decimals > scale) return -1;
            v = v * 10 + (p[i++] - '0');
        }
        if (i != n) return -1;
    }
    v *= POW10[scale - decimals];
    *out = neg ? -v : v;
    return 0;
}

/* YYYY-MM-DD, a real day of years 1 to 9999, as days since 1970-01-01. */
static inline int read_date(const uint8_t *p, size_t n, int32_t *out) {
    if (n != 10 || p[4] != '-' || p[7] != '-') return -1;
    static const int at[8] = {0, 1, 2, 3, 5, 6, 8, 9};
    for (int k = 0; k < 8; k++)
        if (!is_digit(p[at[k]])) return -1;
    int y = (p[0] - '0') * 1000 + (p[1] - '0') * 100 + (p[2] - '0') * 10 + (p[3] - '0');
    int m = (p[5] - '0') * 10 + (p[6] - '0');
    int d = (p[8] - '0') * 10 + (p[9] - '0');
    static const int days[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (y < 1 || m < 1 || m > 12 || d < 1 || d > days[m - 1] || (m == 2 && d == 29 && !leap))
        return -1;
    /* days from the civil date (H. Hinnant's algorithm) */
    y -= m <= 2;
    int era = y / 400;
    int yoe = y - era * 400;
    int doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    *out = (int32_t)(era * 146097 + doe - 719468);
    return 0;
}

/* [-]digits[.digits][(e|E)[+|-]digits], correctly rounded. */
static inline int read_double(const uint8_t *p, size_t n, double *out) {
#if HAVE_STRTOD_L
    char text[64];
    size_t i = n && *p == '-';
    size_t start = i;
    while (i < n && is_digit(p[i])) i++;
    if (i == start || n >= sizeof text) return -1;
    if (i < n && p[i] == '.') {
        size_t from = ++i;
        while (i < n && is_digit(p[i])) i++;
        if (i == from) return -1;
    }
    if (i < n && (p[i] == 'e' || p[i] == 'E')) {
        i += 1 + (i + 1 < n && (p[i + 1] == '+' || p[i + 1] == '-'));
        size_t from = i;
        while (i < n && is_digit(p[i])) i++;
        if (i == from) return -1;
    }
    if (i != n) return -1;
    memcpy(text, p, n);
    text[n] = 0;
    char *end;
    double v = strtod_l(text, &end, c_locale);
    if (end != text + n || v - v != 0) return -1; /* inf: out of range, the general way */
    *out = v;
    return 0;
#else
    (void)p, (void)n, (void)out;
    return -1;
#endif
}

/* Well-formed UTF-8 (no surrogates, no overlong forms, at most U+10FFFF). */
static int is_utf8(const uint8_t *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        if (len == 0 || i + len > n) return 0;
        uint32_t cp = c & (0x7F >> len);
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (p[i + k] & 0x3F);
        }
        static const uint32_t least[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < least[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += len;
    }
    return 1;
}

static inline int is_ascii(const uint8_t *p, size_t n) {
    uint8_t any = 0;
    for (size_t i = 0; i < n; i++) any |= p[i];
    return any < 0x80;
}

#endif
