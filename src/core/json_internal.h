/* core/json_internal.h (internal): reading configuration files (JSON, via cJSON) with errors that
 * name the field.
 *
 * Usage:
 *   cJSON *doc;
 *   CARL_TRY(carl_json_load("run.json", &doc));   // "run.json: malformed JSON at line 3, column 7"
 *   int steps; double lr; int mode; const char *name;
 *   static const char *const keys[] = {"steps", "lr", "mode", "name"};
 *   static const char *const modes[] = {"flat", "hier"};
 *   carl_status st = carl_json_check_keys(doc, "", keys, 4);       // rejects "stpes" by name
 *   if (!st) st = carl_json_get_int(doc, "", "steps", 1, 1000000, &steps);
 *   if (!st) st = carl_json_get_pos(doc, "", "lr", &lr);            // "lr must be > 0, got -1"
 *   if (!st) st = carl_json_opt_enum(doc, "", "mode", modes, 2, 0, &mode);
 *   if (!st) st = carl_json_opt_str(doc, "", "name", "run", &name); // points into doc
 *   carl_json_free(doc);
 *
 * Field names in errors: `ctx` is the path of the object that holds `key` ("links.inter", or ""
 * / NULL at the top), so errors read "links.inter.GBps must be > 0, got -3",
 * "nodes: missing (required integer)", "nodes must be an integer, got string \"two\"".
 * carl_json_load prefixes the file name. All getters leave *out untouched on error.
 * Integers are read from JSON numbers and must be whole; values above 2^53 are not exact.
 * Numbers must be finite.
 *
 * Ownership: the cJSON tree from carl_json_parse/load belongs to the caller (carl_json_free).
 * Strings returned by the getters point into the tree and live as long as it. Arrays returned by
 * carl_json_*_array are malloc'ed and belong to the caller (free()).
 */
#ifndef CARL_JSON_INTERNAL_H
#define CARL_JSON_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "carl/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Parse text of len bytes as one JSON value (trailing non-space text is an error).
 * CARL_ERR_PARSE with "<what>: malformed JSON at line L, column C (near '...')". what may be NULL. */
carl_status carl_json_parse(const char *text, size_t len, const char *what, cJSON **out);
/* Read and parse a file; every error is prefixed with path. */
carl_status carl_json_load(const char *path, cJSON **out);
void carl_json_free(cJSON *doc);

/* "object", "array", "string", "number", "true"/"false" -> "boolean", "null". */
const char *carl_json_type_name(const cJSON *item);

/* Error (naming ctx) unless obj is a JSON object. */
carl_status carl_json_expect_object(const cJSON *obj, const char *ctx);
/* Error unless every key of obj is one of allowed[0..n) and no key appears twice:
 * "links.intra: unknown key \"GBPS\"" (the allowed keys are listed in the message). */
carl_status carl_json_check_keys(const cJSON *obj, const char *ctx, const char *const *allowed, int n);
/* true when obj has key (whatever its value). */
bool carl_json_has(const cJSON *obj, const char *key);

/* ---- keyed getters: get_* require the key, opt_* use def when it is absent ------------------ */
/* Whole number in [lo, hi]. */
carl_status carl_json_get_int(const cJSON *obj, const char *ctx, const char *key, int lo, int hi, int *out);
carl_status carl_json_opt_int(const cJSON *obj, const char *ctx, const char *key, int lo, int hi, int def, int *out);
carl_status carl_json_get_i64(const cJSON *obj, const char *ctx, const char *key, int64_t lo, int64_t hi, int64_t *out);
carl_status carl_json_opt_i64(const cJSON *obj, const char *ctx, const char *key, int64_t lo, int64_t hi, int64_t def,
                              int64_t *out);
/* Finite number in [lo, hi] (pass -INFINITY / INFINITY for an open side). */
carl_status carl_json_get_num(const cJSON *obj, const char *ctx, const char *key, double lo, double hi, double *out);
carl_status carl_json_opt_num(const cJSON *obj, const char *ctx, const char *key, double lo, double hi, double def,
                              double *out);
/* Finite number > 0. */
carl_status carl_json_get_pos(const cJSON *obj, const char *ctx, const char *key, double *out);
carl_status carl_json_opt_pos(const cJSON *obj, const char *ctx, const char *key, double def, double *out);
/* true / false. */
carl_status carl_json_get_bool(const cJSON *obj, const char *ctx, const char *key, bool *out);
carl_status carl_json_opt_bool(const cJSON *obj, const char *ctx, const char *key, bool def, bool *out);
/* String (pointer into the tree). */
carl_status carl_json_get_str(const cJSON *obj, const char *ctx, const char *key, const char **out);
carl_status carl_json_opt_str(const cJSON *obj, const char *ctx, const char *key, const char *def, const char **out);
/* String that must be one of names[0..n): *out = its index. Errors list the accepted names. */
carl_status carl_json_get_enum(const cJSON *obj, const char *ctx, const char *key, const char *const *names, int n,
                               int *out);
carl_status carl_json_opt_enum(const cJSON *obj, const char *ctx, const char *key, const char *const *names, int n,
                               int def, int *out);
/* Nested object (pointer into the tree); opt_obj gives NULL when absent. */
carl_status carl_json_get_obj(const cJSON *obj, const char *ctx, const char *key, const cJSON **out);
carl_status carl_json_opt_obj(const cJSON *obj, const char *ctx, const char *key, const cJSON **out);

/* Array of whole numbers in [lo, hi]: *out malloc'ed [*n] (NULL when empty). Errors name the
 * element: "devices[2][5] must be in [0, 255], got 300". */
carl_status carl_json_get_int_array(const cJSON *obj, const char *ctx, const char *key, int lo, int hi, int32_t **out,
                                    int *n);
/* The same for an array item itself, named `name` in errors (for arrays of arrays). */
carl_status carl_json_int_array(const cJSON *arr, const char *name, int lo, int hi, int32_t **out, int *n);
/* Array of finite numbers in [lo, hi]: *out malloc'ed [*n]. */
carl_status carl_json_get_num_array(const cJSON *obj, const char *ctx, const char *key, double lo, double hi,
                                    double **out, int *n);

/* The full name of a field: "ctx.key", or "key" when ctx is NULL or "". Writes into buf. */
const char *carl_json_field(char *buf, size_t cap, const char *ctx, const char *key);

#ifdef __cplusplus
}
#endif
#endif
