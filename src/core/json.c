/* JSON documents and typed getters whose errors name the field (core/json_internal.h). */
#include "core/json_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- documents ------------------------------------------------------------------------------- */

static int json_is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* Line and column (1-based) of position pos in text. */
static void json_line_col(const char *text, size_t pos, int *line, int *col) {
  int l = 1, c = 1;
  for (size_t i = 0; i < pos; i++) {
    if (text[i] == '\n') {
      l++;
      c = 1;
    } else {
      c++;
    }
  }
  *line = l;
  *col = c;
}

static carl_status json_syntax_error(const char *text, size_t len, size_t pos, const char *what, const char *why) {
  if (pos > len) pos = len;
  int line, col;
  json_line_col(text, pos, &line, &col);
  char near[24];
  size_t m = 0;
  for (size_t i = pos; i < len && m < 16; i++) {
    char ch = text[i];
    if (ch == '\n' || ch == '\r') break;
    near[m++] = (ch >= 32 && ch < 127) ? ch : '?';
  }
  near[m] = '\0';
  const char *pre = what && *what ? what : "JSON";
  if (m > 0)
    return carl_fail(CARL_ERR_PARSE, "%s: %s at line %d, column %d (near '%s')", pre, why, line, col, near);
  return carl_fail(CARL_ERR_PARSE, "%s: %s at line %d, column %d (end of input)", pre, why, line, col);
}

/* Nesting depth (open brackets and braces, outside strings) of text just before pos. */
static int json_depth_at(const char *text, size_t pos) {
  int depth = 0, in_str = 0;
  for (size_t i = 0; i < pos; i++) {
    char c = text[i];
    if (in_str) {
      if (c == '\\')
        i++;
      else if (c == '"')
        in_str = 0;
    } else if (c == '"') {
      in_str = 1;
    } else if (c == '[' || c == '{') {
      depth++;
    } else if (c == ']' || c == '}') {
      depth--;
    }
  }
  return depth;
}

/* Offset of the first byte of text[0, len) that is not well-formed UTF-8 (RFC 3629: no overlongs,
 * no surrogates, at most U+10FFFF), a raw NUL, or the start of a \u0000 escape; len when none is.
 * *why gets what is wrong. Names end up in JSON reports, CSV and Markdown: they must stay text. */
static size_t json_text_bad(const char *text, size_t len, const char **why) {
  const unsigned char *u = (const unsigned char *)text;
  size_t i = 0;
  while (i < len) {
    unsigned c = u[i];
    if (c == 0) {
      *why = "a NUL byte";
      return i;
    }
    if (c == '\\') {
      if (i + 5 < len && u[i + 1] == 'u' && !memcmp(text + i + 2, "0000", 4)) {
        *why = "a \\u0000 (NUL) escape: strings may not contain NUL";
        return i;
      }
      i += 2; /* the escaped character (a backslash pair must not start a new escape) */
      continue;
    }
    if (c < 0x80) {
      i++;
      continue;
    }
    int n = c >= 0xC2 && c <= 0xDF ? 1 : c >= 0xE0 && c <= 0xEF ? 2 : c >= 0xF0 && c <= 0xF4 ? 3 : -1;
    unsigned lo = 0x80, hi = 0xBF; /* range of the second byte */
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
    int ok = n > 0 && i + (size_t)n < len && u[i + 1] >= lo && u[i + 1] <= hi;
    for (int k = 2; ok && k <= n; k++) ok = u[i + k] >= 0x80 && u[i + k] <= 0xBF;
    if (!ok) {
      *why = "bytes that are not UTF-8 (JSON text must be UTF-8)";
      return i;
    }
    i += (size_t)n + 1;
  }
  return len;
}

carl_status carl_json_parse(const char *text, size_t len, const char *what, cJSON **out) {
  *out = NULL;
  if (!text) return carl_fail(CARL_ERR_INVALID, "%s: no JSON text", what && *what ? what : "JSON");
  size_t start = 0;
  while (start < len && json_is_space(text[start])) start++;
  if (start == len) return json_syntax_error(text, len, len, what, "empty document");
  const char *end = NULL;
  cJSON *doc = cJSON_ParseWithLengthOpts(text, len, &end, 0);
  if (!doc) {
    size_t pos = end && end >= text ? (size_t)(end - text) : 0;
    if (pos > len) pos = len;
    /* cJSON stops at its nesting limit with the same failure as for a syntax error */
    if (json_depth_at(text, pos + 1) > CJSON_NESTING_LIMIT) {
      char why[96];
      snprintf(why, sizeof why, "JSON nested deeper than %d levels (the parser's limit)", CJSON_NESTING_LIMIT);
      return json_syntax_error(text, len, pos, what, why);
    }
    return json_syntax_error(text, len, pos, what, "malformed JSON");
  }
  size_t pos = end ? (size_t)(end - text) : len;
  while (pos < len && json_is_space(text[pos])) pos++;
  if (pos < len && text[pos] != '\0') {
    cJSON_Delete(doc);
    return json_syntax_error(text, len, pos, what, "unexpected text after the JSON value");
  }
  const char *why = NULL;
  size_t bad = json_text_bad(text, pos, &why);
  if (bad < pos) {
    cJSON_Delete(doc);
    return json_syntax_error(text, len, bad, what, why);
  }
  *out = doc;
  return CARL_OK;
}

carl_status carl_json_load(const char *path, cJSON **out) {
  *out = NULL;
  char *text;
  size_t len;
  CARL_TRY(carl_read_file(path, &text, &len)); /* its errors already name the path */
  carl_status st = carl_json_parse(text, len, path, out);
  free(text);
  return st;
}

void carl_json_free(cJSON *doc) { cJSON_Delete(doc); }

const char *carl_json_type_name(const cJSON *item) {
  if (!item) return "nothing";
  if (cJSON_IsObject(item)) return "object";
  if (cJSON_IsArray(item)) return "array";
  if (cJSON_IsString(item)) return "string";
  if (cJSON_IsNumber(item)) return "number";
  if (cJSON_IsBool(item)) return "boolean";
  if (cJSON_IsNull(item)) return "null";
  return "invalid value";
}

const char *carl_json_field(char *buf, size_t cap, const char *ctx, const char *key) {
  if (ctx && *ctx && key && *key)
    snprintf(buf, cap, "%s.%s", ctx, key);
  else if (key && *key)
    snprintf(buf, cap, "%s", key);
  else
    snprintf(buf, cap, "%s", ctx && *ctx ? ctx : "(document)");
  return buf;
}

/* "got string \"abc\"", "got number 3.5", "got object". */
static void json_describe(const cJSON *it, char *buf, size_t cap) {
  if (cJSON_IsString(it))
    snprintf(buf, cap, "string \"%.40s\"", it->valuestring ? it->valuestring : "");
  else if (cJSON_IsNumber(it))
    snprintf(buf, cap, "number %.17g", it->valuedouble);
  else
    snprintf(buf, cap, "%s", carl_json_type_name(it));
}

static carl_status json_wrong_type(const char *name, const char *want, const cJSON *it) {
  char got[80];
  json_describe(it, got, sizeof got);
  return carl_fail(CARL_ERR_INVALID, "%s must be %s, got %s", name, want, got);
}

carl_status carl_json_expect_object(const cJSON *obj, const char *ctx) {
  char name[256];
  carl_json_field(name, sizeof name, ctx, NULL);
  if (!cJSON_IsObject(obj)) return json_wrong_type(name, "an object", obj);
  return CARL_OK;
}

bool carl_json_has(const cJSON *obj, const char *key) {
  return cJSON_IsObject(obj) && cJSON_GetObjectItemCaseSensitive(obj, key) != NULL;
}

carl_status carl_json_check_keys(const cJSON *obj, const char *ctx, const char *const *allowed, int n) {
  CARL_TRY(carl_json_expect_object(obj, ctx));
  for (const cJSON *it = obj->child; it; it = it->next) {
    const char *k = it->string ? it->string : "";
    int ok = 0;
    for (int i = 0; i < n && !ok; i++) ok = strcmp(k, allowed[i]) == 0;
    char name[256];
    if (!ok) {
      char list[512];
      size_t m = 0;
      list[0] = '\0';
      for (int i = 0; i < n && m + 1 < sizeof list; i++)
        m += (size_t)snprintf(list + m, sizeof list - m, "%s\"%s\"", i ? ", " : "", allowed[i]);
      return carl_fail(CARL_ERR_INVALID, "%s: unknown key \"%.60s\" (expected one of %s)",
                       carl_json_field(name, sizeof name, ctx, NULL), k, list);
    }
    for (const cJSON *jt = obj->child; jt != it; jt = jt->next)
      if (jt->string && strcmp(jt->string, k) == 0)
        return carl_fail(CARL_ERR_INVALID, "%s: key \"%.60s\" appears twice",
                         carl_json_field(name, sizeof name, ctx, NULL), k);
  }
  return CARL_OK;
}

/* Looks up key in obj. *it = NULL when absent; error when obj is not an object or when the key is
 * absent and required. */
static carl_status json_find(const cJSON *obj, const char *ctx, const char *key, int required, const char *want,
                             const cJSON **it, char *name, size_t cap) {
  carl_json_field(name, cap, ctx, key);
  *it = NULL;
  if (!cJSON_IsObject(obj)) {
    char oname[256];
    carl_json_field(oname, sizeof oname, ctx, NULL);
    return json_wrong_type(oname, "an object", obj);
  }
  *it = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (!*it && required) return carl_fail(CARL_ERR_INVALID, "%s: missing (required %s)", name, want);
  return CARL_OK;
}

/* ---- scalar conversions of one item, named `name` -------------------------------------------- */

static carl_status json_as_i64(const cJSON *it, const char *name, int64_t lo, int64_t hi, int64_t *out) {
  if (!cJSON_IsNumber(it)) return json_wrong_type(name, "an integer", it);
  double v = it->valuedouble;
  if (!isfinite(v) || v != floor(v) || fabs(v) > 9007199254740992.0) return json_wrong_type(name, "an integer", it);
  int64_t x = (int64_t)v;
  if (x < lo || x > hi) {
    if (hi == INT64_MAX)
      return carl_fail(CARL_ERR_INVALID, "%s must be >= %lld, got %lld", name, (long long)lo, (long long)x);
    return carl_fail(CARL_ERR_INVALID, "%s must be in [%lld, %lld], got %lld", name, (long long)lo, (long long)hi,
                     (long long)x);
  }
  *out = x;
  return CARL_OK;
}

static carl_status json_as_int(const cJSON *it, const char *name, int lo, int hi, int *out) {
  int64_t x = 0;
  if (!cJSON_IsNumber(it)) return json_wrong_type(name, "an integer", it);
  double v = it->valuedouble;
  if (isfinite(v) && v == floor(v) && (v < (double)lo || v > (double)hi)) {
    if (hi == INT32_MAX) return carl_fail(CARL_ERR_INVALID, "%s must be >= %d, got %.17g", name, lo, v);
    return carl_fail(CARL_ERR_INVALID, "%s must be in [%d, %d], got %.17g", name, lo, hi, v);
  }
  CARL_TRY(json_as_i64(it, name, lo, hi, &x));
  *out = (int)x;
  return CARL_OK;
}

/* v with the fewest digits (up to 17) that read back as v: 1e-06, not 9.9999999999999995e-07. */
static const char *json_num_text(double v, char *buf, size_t cap) {
  for (int p = 1; p <= 17; p++) {
    snprintf(buf, cap, "%.*g", p, v);
    if (strtod(buf, NULL) == v) break;
  }
  return buf;
}

static carl_status json_as_num(const cJSON *it, const char *name, double lo, double hi, int strict_pos, double *out) {
  if (!cJSON_IsNumber(it)) return json_wrong_type(name, "a number", it);
  double v = it->valuedouble;
  if (!isfinite(v)) return carl_fail(CARL_ERR_INVALID, "%s must be finite, got %g", name, v);
  if (strict_pos) {
    if (!(v > 0)) return carl_fail(CARL_ERR_INVALID, "%s must be > 0, got %.17g", name, v);
  } else if (v < lo || v > hi) {
    char a[32], b[32], g[32];
    json_num_text(lo, a, sizeof a);
    json_num_text(hi, b, sizeof b);
    json_num_text(v, g, sizeof g);
    if (isinf(hi)) return carl_fail(CARL_ERR_INVALID, "%s must be >= %s, got %s", name, a, g);
    if (isinf(lo)) return carl_fail(CARL_ERR_INVALID, "%s must be <= %s, got %s", name, b, g);
    return carl_fail(CARL_ERR_INVALID, "%s must be in [%s, %s], got %s", name, a, b, g);
  }
  *out = v;
  return CARL_OK;
}

/* ---- keyed getters ----------------------------------------------------------------------------- */

#define JSON_GETTER_PROLOGUE(required, want)                                 \
  char name[256];                                                            \
  const cJSON *it;                                                           \
  CARL_TRY(json_find(obj, ctx, key, required, want, &it, name, sizeof name))

carl_status carl_json_get_int(const cJSON *obj, const char *ctx, const char *key, int lo, int hi, int *out) {
  JSON_GETTER_PROLOGUE(1, "integer");
  return json_as_int(it, name, lo, hi, out);
}

carl_status carl_json_opt_int(const cJSON *obj, const char *ctx, const char *key, int lo, int hi, int def, int *out) {
  JSON_GETTER_PROLOGUE(0, "integer");
  if (!it) {
    *out = def;
    return CARL_OK;
  }
  return json_as_int(it, name, lo, hi, out);
}

carl_status carl_json_get_i64(const cJSON *obj, const char *ctx, const char *key, int64_t lo, int64_t hi,
                              int64_t *out) {
  JSON_GETTER_PROLOGUE(1, "integer");
  return json_as_i64(it, name, lo, hi, out);
}

carl_status carl_json_opt_i64(const cJSON *obj, const char *ctx, const char *key, int64_t lo, int64_t hi, int64_t def,
                              int64_t *out) {
  JSON_GETTER_PROLOGUE(0, "integer");
  if (!it) {
    *out = def;
    return CARL_OK;
  }
  return json_as_i64(it, name, lo, hi, out);
}

carl_status carl_json_get_num(const cJSON *obj, const char *ctx, const char *key, double lo, double hi, double *out) {
  JSON_GETTER_PROLOGUE(1, "number");
  return json_as_num(it, name, lo, hi, 0, out);
}

carl_status carl_json_opt_num(const cJSON *obj, const char *ctx, const char *key, double lo, double hi, double def,
                              double *out) {
  JSON_GETTER_PROLOGUE(0, "number");
  if (!it) {
    *out = def;
    return CARL_OK;
  }
  return json_as_num(it, name, lo, hi, 0, out);
}

carl_status carl_json_get_pos(const cJSON *obj, const char *ctx, const char *key, double *out) {
  JSON_GETTER_PROLOGUE(1, "number");
  return json_as_num(it, name, 0, 0, 1, out);
}

carl_status carl_json_opt_pos(const cJSON *obj, const char *ctx, const char *key, double def, double *out) {
  JSON_GETTER_PROLOGUE(0, "number");
  if (!it) {
    *out = def;
    return CARL_OK;
  }
  return json_as_num(it, name, 0, 0, 1, out);
}

static carl_status json_as_bool(const cJSON *it, const char *name, bool *out) {
  if (!cJSON_IsBool(it)) return json_wrong_type(name, "true or false", it);
  *out = cJSON_IsTrue(it);
  return CARL_OK;
}

carl_status carl_json_get_bool(const cJSON *obj, const char *ctx, const char *key, bool *out) {
  JSON_GETTER_PROLOGUE(1, "boolean");
  return json_as_bool(it, name, out);
}

carl_status carl_json_opt_bool(const cJSON *obj, const char *ctx, const char *key, bool def, bool *out) {
  JSON_GETTER_PROLOGUE(0, "boolean");
  if (!it) {
    *out = def;
    return CARL_OK;
  }
  return json_as_bool(it, name, out);
}

static carl_status json_as_str(const cJSON *it, const char *name, const char **out) {
  if (!cJSON_IsString(it) || !it->valuestring) return json_wrong_type(name, "a string", it);
  *out = it->valuestring;
  return CARL_OK;
}

carl_status carl_json_get_str(const cJSON *obj, const char *ctx, const char *key, const char **out) {
  JSON_GETTER_PROLOGUE(1, "string");
  return json_as_str(it, name, out);
}

carl_status carl_json_opt_str(const cJSON *obj, const char *ctx, const char *key, const char *def, const char **out) {
  JSON_GETTER_PROLOGUE(0, "string");
  if (!it) {
    *out = def;
    return CARL_OK;
  }
  return json_as_str(it, name, out);
}

static carl_status json_as_enum(const cJSON *it, const char *name, const char *const *names, int n, int *out) {
  const char *s = NULL;
  CARL_TRY(json_as_str(it, name, &s));
  for (int i = 0; i < n; i++)
    if (strcmp(s, names[i]) == 0) {
      *out = i;
      return CARL_OK;
    }
  char list[512];
  size_t m = 0;
  list[0] = '\0';
  for (int i = 0; i < n && m + 1 < sizeof list; i++)
    m += (size_t)snprintf(list + m, sizeof list - m, "%s\"%s\"", i ? ", " : "", names[i]);
  return carl_fail(CARL_ERR_INVALID, "%s must be one of %s, got \"%.60s\"", name, list, s);
}

carl_status carl_json_get_enum(const cJSON *obj, const char *ctx, const char *key, const char *const *names, int n,
                               int *out) {
  JSON_GETTER_PROLOGUE(1, "string");
  return json_as_enum(it, name, names, n, out);
}

carl_status carl_json_opt_enum(const cJSON *obj, const char *ctx, const char *key, const char *const *names, int n,
                               int def, int *out) {
  JSON_GETTER_PROLOGUE(0, "string");
  if (!it) {
    *out = def;
    return CARL_OK;
  }
  return json_as_enum(it, name, names, n, out);
}

carl_status carl_json_get_obj(const cJSON *obj, const char *ctx, const char *key, const cJSON **out) {
  JSON_GETTER_PROLOGUE(1, "object");
  if (!cJSON_IsObject(it)) return json_wrong_type(name, "an object", it);
  *out = it;
  return CARL_OK;
}

carl_status carl_json_opt_obj(const cJSON *obj, const char *ctx, const char *key, const cJSON **out) {
  JSON_GETTER_PROLOGUE(0, "object");
  if (it && !cJSON_IsObject(it)) return json_wrong_type(name, "an object", it);
  *out = it;
  return CARL_OK;
}

/* ---- arrays ------------------------------------------------------------------------------------ */

carl_status carl_json_int_array(const cJSON *arr, const char *name, int lo, int hi, int32_t **out, int *n) {
  if (!cJSON_IsArray(arr)) return json_wrong_type(name, "an array of integers", arr);
  int m = cJSON_GetArraySize(arr);
  int32_t *v = m > 0 ? malloc((size_t)m * sizeof *v) : NULL;
  if (m > 0 && !v) return carl_fail(CARL_ERR_NOMEM, "%s: out of memory for %d integers", name, m);
  int i = 0;
  for (const cJSON *it = arr->child; it; it = it->next, i++) {
    char ename[300];
    snprintf(ename, sizeof ename, "%s[%d]", name, i);
    int x = 0;
    carl_status st = json_as_int(it, ename, lo, hi, &x);
    if (st != CARL_OK) {
      free(v);
      return st;
    }
    v[i] = x;
  }
  *out = v;
  *n = m;
  return CARL_OK;
}

carl_status carl_json_get_int_array(const cJSON *obj, const char *ctx, const char *key, int lo, int hi, int32_t **out,
                                    int *n) {
  JSON_GETTER_PROLOGUE(1, "array of integers");
  return carl_json_int_array(it, name, lo, hi, out, n);
}

carl_status carl_json_get_num_array(const cJSON *obj, const char *ctx, const char *key, double lo, double hi,
                                    double **out, int *n) {
  JSON_GETTER_PROLOGUE(1, "array of numbers");
  if (!cJSON_IsArray(it)) return json_wrong_type(name, "an array of numbers", it);
  int m = cJSON_GetArraySize(it);
  double *v = m > 0 ? malloc((size_t)m * sizeof *v) : NULL;
  if (m > 0 && !v) return carl_fail(CARL_ERR_NOMEM, "%s: out of memory for %d numbers", name, m);
  int i = 0;
  for (const cJSON *e = it->child; e; e = e->next, i++) {
    char ename[300];
    snprintf(ename, sizeof ename, "%s[%d]", name, i);
    carl_status st = json_as_num(e, ename, lo, hi, 0, &v[i]);
    if (st != CARL_OK) {
      free(v);
      return st;
    }
  }
  *out = v;
  *n = m;
  return CARL_OK;
}
