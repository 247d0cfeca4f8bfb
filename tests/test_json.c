/* JSON helpers: syntax errors with line:column, typed getters whose errors name the field. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/json_internal.h"

static cJSON *parse_ok(const char *text) {
  cJSON *doc = NULL;
  carl_status st = carl_json_parse(text, strlen(text), "t.json", &doc);
  if (st != CARL_OK) fprintf(stderr, "unexpected: %s\n", carl_errmsg());
  assert_int_equal(st, CARL_OK);
  assert_non_null(doc);
  return doc;
}

#define assert_msg_contains(s) \
  do { \
    if (!strstr(carl_errmsg(), (s))) fprintf(stderr, "message: %s\nexpected to contain: %s\n", carl_errmsg(), (s)); \
    assert_non_null(strstr(carl_errmsg(), (s))); \
  } while (0)

static void test_syntax_errors(void **s) {
  (void)s;
  cJSON *doc = NULL;
  /* Line 3 is `  "b": ]`: two spaces, "b" (3 chars), ':' and a space put ']' in column 8. */
  const char *bad = "{\n  \"a\": 1,\n  \"b\": ]\n}";
  assert_int_equal(carl_json_parse(bad, strlen(bad), "t.json", &doc), CARL_ERR_PARSE);
  assert_null(doc);
  assert_msg_contains("t.json: malformed JSON at line 3, column 8");
  /* `{} x`: the value ends after column 2, the stray 'x' is in column 4. */
  assert_int_equal(carl_json_parse("{} x", 4, "t.json", &doc), CARL_ERR_PARSE);
  assert_msg_contains("line 1, column 4");
  assert_msg_contains("unexpected text");
  assert_int_equal(carl_json_parse("  \n ", 4, "t.json", &doc), CARL_ERR_PARSE);
  assert_msg_contains("empty document");
  /* Truncated input: the error is reported, never a crash. */
  assert_int_equal(carl_json_parse("{\"a\": [1, 2", 11, "t.json", &doc), CARL_ERR_PARSE);
  assert_msg_contains("t.json: malformed JSON at line 1");
  /* A length shorter than the string: only the first len bytes count. */
  assert_int_equal(carl_json_parse("{\"a\":1}garbage", 7, "t.json", &doc), CARL_OK);
  carl_json_free(doc);
}

/* cJSON's nesting limit is 1000 (CJSON_NESTING_LIMIT in cJSON.h): 1000 nested arrays parse, 1001
 * are refused as nested too deep, not as malformed; a syntax error at depth 1000 stays malformed. */
static void test_nesting(void **s) {
  (void)s;
  enum { N = 1001 };
  char text[2 * N + 2];
  cJSON *doc = NULL;
  for (int i = 0; i < N - 1; i++) text[i] = '[';
  for (int i = 0; i < N - 1; i++) text[N - 1 + i] = ']';
  assert_int_equal(carl_json_parse(text, 2 * (N - 1), "deep.json", &doc), CARL_OK);
  carl_json_free(doc);
  for (int i = 0; i < N; i++) text[i] = '[';
  for (int i = 0; i < N; i++) text[N + i] = ']';
  assert_int_equal(carl_json_parse(text, 2 * N, "deep.json", &doc), CARL_ERR_PARSE);
  assert_msg_contains("deep.json: JSON nested deeper than 1000 levels");
  assert_null(strstr(carl_errmsg(), "malformed"));
  for (int i = 0; i < N - 1; i++) text[i] = '[';
  text[N - 1] = 'x';
  assert_int_equal(carl_json_parse(text, N, "deep.json", &doc), CARL_ERR_PARSE);
  assert_msg_contains("deep.json: malformed JSON at line 1, column 1001");
  /* brackets inside strings do not count */
  const char *str = "{\"a\": \"[[[[{{{{\", \"b\": [1]}";
  assert_int_equal(carl_json_parse(str, strlen(str), "s.json", &doc), CARL_OK);
  carl_json_free(doc);
}

static void test_load(void **s) {
  (void)s;
  cJSON *doc = NULL;
  assert_int_equal(carl_json_load("/nonexistent/dir/x.json", &doc), CARL_ERR_IO);
  assert_msg_contains("/nonexistent/dir/x.json");
  char path[] = "/tmp/carl_test_json_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  const char *text = "{\"a\": 1,\n \"b\": tru}\n";
  assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  assert_int_equal(carl_json_load(path, &doc), CARL_ERR_PARSE);
  assert_true(strncmp(carl_errmsg(), path, strlen(path)) == 0);
  assert_msg_contains("line 2");
  unlink(path);
}

static void test_ints(void **s) {
  (void)s;
  cJSON *doc = parse_ok("{\"n\": 8, \"neg\": -3, \"half\": 2.5, \"str\": \"two\", \"big\": 1e12,"
                        " \"sub\": {\"x\": 4}}");
  int x = -1;
  assert_int_equal(carl_json_get_int(doc, "", "n", 1, 64, &x), CARL_OK);
  assert_int_equal(x, 8);
  assert_int_equal(carl_json_get_int(doc, NULL, "missing", 1, 64, &x), CARL_ERR_INVALID);
  assert_string_equal(carl_errmsg(), "missing: missing (required integer)");
  assert_int_equal(x, 8); /* untouched */
  assert_int_equal(carl_json_opt_int(doc, "", "missing", 1, 64, 5, &x), CARL_OK);
  assert_int_equal(x, 5);
  assert_int_equal(carl_json_get_int(doc, "", "neg", 1, 64, &x), CARL_ERR_INVALID);
  assert_string_equal(carl_errmsg(), "neg must be in [1, 64], got -3");
  assert_int_equal(carl_json_get_int(doc, "", "neg", 1, INT32_MAX, &x), CARL_ERR_INVALID);
  assert_string_equal(carl_errmsg(), "neg must be >= 1, got -3");
  assert_int_equal(carl_json_get_int(doc, "", "half", 0, 10, &x), CARL_ERR_INVALID);
  assert_string_equal(carl_errmsg(), "half must be an integer, got number 2.5");
  assert_int_equal(carl_json_get_int(doc, "", "str", 0, 10, &x), CARL_ERR_INVALID);
  assert_string_equal(carl_errmsg(), "str must be an integer, got string \"two\"");
  assert_int_equal(carl_json_get_int(doc, "", "big", 0, INT32_MAX, &x), CARL_ERR_INVALID);
  assert_msg_contains("big must be >= 0, got 1000000000000");
  int64_t y = 0;
  assert_int_equal(carl_json_get_i64(doc, "", "big", 0, INT64_MAX, &y), CARL_OK);
  assert_true(y == 1000000000000LL);
  const cJSON *sub = NULL;
  assert_int_equal(carl_json_get_obj(doc, "", "sub", &sub), CARL_OK);
  assert_int_equal(carl_json_get_int(sub, "sub", "x", 5, 9, &x), CARL_ERR_INVALID);
  assert_string_equal(carl_errmsg(), "sub.x must be in [5, 9], got 4");
  assert_int_equal(carl_json_get_obj(doc, "", "n", &sub), CARL_ERR_INVALID);
  assert_string_equal(carl_errmsg(), "n must be an object, got number 8");
  assert_int_equal(carl_json_opt_obj(doc, "", "none", &sub), CARL_OK);
  assert_null(sub);
  /* Getting a field of something that is not an object names that thing. */
  const cJSON *arr = cJSON_CreateArray();
  assert_int_equal(carl_json_get_int(arr, "links", "GBps", 0, 1, &x), CARL_ERR_INVALID);
  assert_string_equal(carl_errmsg(), "links must be an object, got array");
  cJSON_Delete((cJSON *)arr);
  carl_json_free(doc);
}

static void test_numbers_bools_strings(void **s) {
  (void)s;
  cJSON *doc = parse_ok("{\"links\": {\"inter\": {\"GBps\": -3, \"lat\": 0, \"ok\": 0.5}}, \"b\": true,"
                        " \"nb\": 1, \"name\": \"h800\", \"mode\": \"hier\", \"inf\": 1e999}");
  const cJSON *links, *inter;
  assert_int_equal(carl_json_get_obj(doc, "", "links", &links), CARL_OK);
  assert_int_equal(carl_json_get_obj(links, "links", "inter", &inter), CARL_OK);
  double v = 7;
  assert_int_equal(carl_json_get_pos(inter, "links.inter", "GBps", &v), CARL_ERR_INVALID);
  assert_string_equal(carl_errmsg(), "links.inter.GBps must be > 0, got -3");
  assert_int_equal(carl_json_get_pos(inter, "links.inter", "lat", &v), CARL_ERR_INVALID);
  assert_string_equal(carl_errmsg(), "links.inter.lat must be > 0, got 0");
  assert_int_equal(carl_json_get_num(inter, "links.inter", "lat", 0, INFINITY, &v), CARL_OK);
  assert_true(v == 0.0);
  assert_int_equal(carl_json_get_num(inter, "links.inter", "ok", 0, 0.25, &v), CARL_ERR_INVALID);
  assert_string_equal(carl_errmsg(), "links.inter.ok must be in [0, 0.25], got 0.5");
  assert_int_equal(carl_json_opt_pos(inter, "links.inter", "absent", 2.5, &v), CARL_OK);
  assert_true(v == 2.5);
  assert_int_equal(carl_json_get_num(doc, "", "inf", -INFINITY, INFINITY, &v), CARL_ERR_INVALID);
  assert_msg_contains("inf must be finite");
  bool b = false;
  assert_int_equal(carl_json_get_bool(doc, "", "b", &b), CARL_OK);
  assert_true(b);
  assert_int_equal(carl_json_get_bool(doc, "", "nb", &b), CARL_ERR_INVALID);
  assert_string_equal(carl_errmsg(), "nb must be true or false, got number 1");
  assert_int_equal(carl_json_opt_bool(doc, "", "absent", false, &b), CARL_OK);
  assert_false(b);
  const char *str = NULL;
  assert_int_equal(carl_json_get_str(doc, "", "name", &str), CARL_OK);
  assert_string_equal(str, "h800");
  assert_int_equal(carl_json_get_str(doc, "", "b", &str), CARL_ERR_INVALID);
  assert_string_equal(carl_errmsg(), "b must be a string, got boolean");
  static const char *const modes[] = {"flat", "hier"};
  int m = -1;
  assert_int_equal(carl_json_get_enum(doc, "", "mode", modes, 2, &m), CARL_OK);
  assert_int_equal(m, 1);
  assert_int_equal(carl_json_get_enum(doc, "", "name", modes, 2, &m), CARL_ERR_INVALID);
  assert_string_equal(carl_errmsg(), "name must be one of \"flat\", \"hier\", got \"h800\"");
  assert_int_equal(carl_json_opt_enum(doc, "", "absent", modes, 2, 0, &m), CARL_OK);
  assert_int_equal(m, 0);
  carl_json_free(doc);
}

static void test_keys_and_arrays(void **s) {
  (void)s;
  cJSON *doc = parse_ok("{\"nodes\": 2, \"nodse\": 3, \"a\": [1, 2, 300], \"aa\": [[0, 1], [2, \"x\"]],"
                        " \"f\": [0.5, 1.5], \"e\": []}");
  static const char *const keys[] = {"nodes", "a", "aa", "f", "e"};
  assert_int_equal(carl_json_check_keys(doc, "", keys, 5), CARL_ERR_INVALID);
  assert_msg_contains("unknown key \"nodse\"");
  assert_true(carl_json_has(doc, "nodse"));
  assert_false(carl_json_has(doc, "zzz"));
  int32_t *v = NULL;
  int n = -1;
  assert_int_equal(carl_json_get_int_array(doc, "", "a", 0, 255, &v, &n), CARL_ERR_INVALID);
  assert_string_equal(carl_errmsg(), "a[2] must be in [0, 255], got 300");
  assert_null(v);
  assert_int_equal(carl_json_get_int_array(doc, "", "a", 0, 1000, &v, &n), CARL_OK);
  assert_int_equal(n, 3);
  assert_int_equal(v[0], 1);
  assert_int_equal(v[2], 300);
  free(v);
  assert_int_equal(carl_json_get_int_array(doc, "", "e", 0, 1, &v, &n), CARL_OK);
  assert_int_equal(n, 0);
  const cJSON *aa = cJSON_GetObjectItemCaseSensitive(doc, "aa");
  assert_int_equal(carl_json_int_array(cJSON_GetArrayItem(aa, 1), "aa[1]", 0, 9, &v, &n), CARL_ERR_INVALID);
  assert_string_equal(carl_errmsg(), "aa[1][1] must be an integer, got string \"x\"");
  assert_int_equal(carl_json_get_int_array(doc, "", "nodes", 0, 9, &v, &n), CARL_ERR_INVALID);
  assert_string_equal(carl_errmsg(), "nodes must be an array of integers, got number 2");
  double *f = NULL;
  assert_int_equal(carl_json_get_num_array(doc, "", "f", 0, 1, &f, &n), CARL_ERR_INVALID);
  assert_string_equal(carl_errmsg(), "f[1] must be in [0, 1], got 1.5");
  assert_int_equal(carl_json_get_num_array(doc, "", "f", 0, 2, &f, &n), CARL_OK);
  assert_int_equal(n, 2);
  assert_true(f[0] == 0.5 && f[1] == 1.5);
  free(f);
  carl_json_free(doc);
  /* duplicate keys are rejected too */
  doc = parse_ok("{\"nodes\": 2, \"nodes\": 3}");
  assert_int_equal(carl_json_check_keys(doc, "cfg", keys, 5), CARL_ERR_INVALID);
  assert_string_equal(carl_errmsg(), "cfg: key \"nodes\" appears twice");
  carl_json_free(doc);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_syntax_errors), cmocka_unit_test(test_nesting), cmocka_unit_test(test_load), cmocka_unit_test(test_ints),
      cmocka_unit_test(test_numbers_bools_strings), cmocka_unit_test(test_keys_and_arrays),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
