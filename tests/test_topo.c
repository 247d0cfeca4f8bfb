/* Topology files, link classes, normalised costs, placements (tables, index, JSON files). */
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

#include "carl/topo.h"

#define assert_msg_contains(s) \
  do { \
    if (!strstr(carl_errmsg(), (s))) fprintf(stderr, "message: %s\nexpected to contain: %s\n", carl_errmsg(), (s)); \
    assert_non_null(strstr(carl_errmsg(), (s))); \
  } while (0)

static carl_status parse(const char *json, carl_topo_t *t) { return carl_topo_parse(json, strlen(json), t); }

static void test_parse_basic(void **s) {
  (void)s;
  carl_topo_t t;
  const char *j = "{\"nodes\":2,\"devices_per_node\":8,\"name\":\"x\","
                  "\"links\":{\"intra\":{\"GBps\":160,\"latency_us\":3},\"inter\":{\"GBps\":50,\"latency_us\":10}}}";
  assert_int_equal(parse(j, &t), CARL_OK);
  assert_int_equal(t.nodes, 2);
  assert_int_equal(t.devices_per_node, 8);
  assert_int_equal(t.devices, 16);
  assert_int_equal(t.nodes_per_rack, 0);
  assert_string_equal(t.name, "x");
  assert_true(t.link[CARL_LINK_INTRA].GBps == 160 && t.link[CARL_LINK_INTER].latency_us == 10);
  /* Devices 0..7 are node 0, 8..15 node 1. */
  assert_int_equal(carl_topo_node(&t, 7), 0);
  assert_int_equal(carl_topo_node(&t, 8), 1);
  assert_int_equal(carl_topo_link(&t, 3, 3), CARL_LINK_SELF);
  assert_int_equal(carl_topo_link(&t, 0, 7), CARL_LINK_INTRA);
  assert_int_equal(carl_topo_link(&t, 7, 8), CARL_LINK_INTER);
  /* Costs: 0 self, 50/160 = 0.3125 intra, 1 inter. */
  assert_true(carl_topo_cost(&t, 5, 5) == 0.0);
  assert_true(fabs(carl_topo_cost(&t, 0, 1) - 0.3125) < 1e-15);
  assert_true(carl_topo_cost(&t, 0, 9) == 1.0);
  assert_string_equal(carl_link_name(CARL_LINK_RACK), "rack");
  /* no name: "<nodes>x<devices_per_node>" */
  j = "{\"nodes\":1,\"devices_per_node\":4,"
      "\"links\":{\"intra\":{\"GBps\":64,\"latency_us\":1},\"inter\":{\"GBps\":25,\"latency_us\":5}}}";
  assert_int_equal(parse(j, &t), CARL_OK);
  assert_string_equal(t.name, "1x4");
}

static void test_rack_and_nics(void **s) {
  (void)s;
  carl_topo_t t;
  /* 4 nodes of 2, racks of 2 nodes; 1 NIC per node of 2 devices: per-device inter = 50*1/2 = 25,
   * rack = 100*1/2 = 50. Costs: intra 25/200 = 0.125, rack 25/50 = 0.5, inter 1. */
  const char *j = "{\"nodes\":4,\"devices_per_node\":2,\"nodes_per_rack\":2,\"nics_per_node\":1,"
                  "\"links\":{\"intra\":{\"GBps\":200,\"latency_us\":1},\"rack\":{\"GBps\":100,\"latency_us\":4},"
                  "\"inter\":{\"GBps\":50,\"latency_us\":8}}}";
  assert_int_equal(parse(j, &t), CARL_OK);
  assert_true(t.link[CARL_LINK_INTER].GBps == 25.0);
  assert_true(t.link[CARL_LINK_RACK].GBps == 50.0);
  assert_int_equal(carl_topo_link(&t, 0, 1), CARL_LINK_INTRA);
  assert_int_equal(carl_topo_link(&t, 1, 2), CARL_LINK_RACK);  /* nodes 0 and 1: rack 0 */
  assert_int_equal(carl_topo_link(&t, 3, 4), CARL_LINK_INTER); /* nodes 1 and 2: racks 0 and 1 */
  assert_int_equal(carl_topo_link(&t, 4, 7), CARL_LINK_RACK);  /* nodes 2 and 3: rack 1 */
  assert_true(carl_topo_cost(&t, 0, 1) == 0.125);
  assert_true(carl_topo_cost(&t, 0, 2) == 0.5);
  assert_true(carl_topo_cost(&t, 0, 7) == 1.0);
}

static void test_make(void **s) {
  (void)s;
  carl_topo_t t;
  assert_int_equal(carl_topo_make(&t, 2, 2, 160, 3, 50, 10), CARL_OK);
  assert_int_equal(t.devices, 4);
  assert_int_equal(carl_topo_link(&t, 1, 2), CARL_LINK_INTER);
  assert_int_equal(carl_topo_make(&t, 0, 2, 160, 3, 50, 10), CARL_ERR_INVALID);
  assert_msg_contains("nodes must be in [1, ");
  assert_int_equal(carl_topo_make(&t, 2, 2, 160, 3, -50, 10), CARL_ERR_INVALID);
  assert_string_equal(carl_errmsg(), "links.inter.GBps must be > 0, got -50");
  assert_int_equal(carl_topo_make(&t, 2, 2, 160, -1, 50, 10), CARL_ERR_INVALID);
  assert_string_equal(carl_errmsg(), "links.intra.latency_us must be >= 0, got -1");
}

/* Every bad field gives an error that names it. */
static void test_bad_topologies(void **s) {
  (void)s;
  static const struct {
    const char *json, *msg;
  } bad[] = {
      {"{\"devices_per_node\":2,\"links\":{\"intra\":{\"GBps\":1,\"latency_us\":1},\"inter\":{\"GBps\":1,\"latency_us\":1}}}",
       "topology: nodes: missing (required integer)"},
      {"{\"nodes\":\"2\",\"devices_per_node\":2,\"links\":{\"intra\":{\"GBps\":1,\"latency_us\":1},\"inter\":{\"GBps\":1,\"latency_us\":1}}}",
       "topology: nodes must be an integer, got string \"2\""},
      {"{\"nodes\":2,\"devices_per_node\":0,\"links\":{\"intra\":{\"GBps\":1,\"latency_us\":1},\"inter\":{\"GBps\":1,\"latency_us\":1}}}",
       "topology: devices_per_node must be in [1, 4096], got 0"},
      {"{\"nodes\":0,\"devices_per_node\":2,\"links\":{\"intra\":{\"GBps\":1,\"latency_us\":1},\"inter\":{\"GBps\":1,\"latency_us\":1}}}",
       "topology: nodes must be in [1, 65536], got 0"},
      {"{\"nodes\":2,\"devices_per_node\":2,\"links\":{\"intra\":{\"GBps\":1,\"latency_us\":1},\"inter\":{\"GBps\":-3,\"latency_us\":1}}}",
       "topology: links.inter.GBps must be in [1e-06, 1e+06], got -3"},
      {"{\"nodes\":2,\"devices_per_node\":2,\"links\":{\"intra\":{\"GBps\":1,\"latency_us\":-1},\"inter\":{\"GBps\":1,\"latency_us\":1}}}",
       "topology: links.intra.latency_us must be in [0, 1e+09], got -1"},
      {"{\"nodes\":2,\"devices_per_node\":2,\"links\":{\"intra\":{\"GBps\":1,\"latency_us\":1}}}",
       "topology: links.inter: missing (required object)"},
      {"{\"nodes\":2,\"devices_per_node\":2,\"links\":{\"intra\":{\"latency_us\":1},\"inter\":{\"GBps\":1,\"latency_us\":1}}}",
       "topology: links.intra.GBps: missing (required number)"},
      {"{\"nodes\":2,\"devices_per_node\":2,\"links\":{\"intra\":{\"GBps\":true,\"latency_us\":1},\"inter\":{\"GBps\":1,\"latency_us\":1}}}",
       "topology: links.intra.GBps must be a number, got boolean"},
      {"{\"nodes\":2,\"devices_per_node\":2,\"links\":{\"intra\":{\"GBPS\":1,\"latency_us\":1},\"inter\":{\"GBps\":1,\"latency_us\":1}}}",
       "topology: links.intra: unknown key \"GBPS\""},
      {"{\"nodes\":2,\"devices_per_node\":2,\"link\":{}}", "topology: (document): unknown key \"link\""},
      {"{\"nodes\":2,\"devices_per_node\":2,\"links\":[]}", "topology: links must be an object, got array"},
      {"{\"nodes\":4,\"devices_per_node\":2,\"links\":{\"intra\":{\"GBps\":1,\"latency_us\":1},\"rack\":{\"GBps\":1,\"latency_us\":1},\"inter\":{\"GBps\":1,\"latency_us\":1}}}",
       "topology: nodes_per_rack: missing (required with links.rack)"},
      {"{\"nodes\":4,\"devices_per_node\":2,\"nodes_per_rack\":2,\"links\":{\"intra\":{\"GBps\":1,\"latency_us\":1},\"inter\":{\"GBps\":1,\"latency_us\":1}}}",
       "topology: nodes_per_rack given without links.rack"},
      {"{\"nodes\":4,\"devices_per_node\":2,\"nodes_per_rack\":8,\"links\":{\"intra\":{\"GBps\":1,\"latency_us\":1},\"rack\":{\"GBps\":1,\"latency_us\":1},\"inter\":{\"GBps\":1,\"latency_us\":1}}}",
       "topology: nodes_per_rack must be in [1, 4], got 8"},
      {"{\"nodes\":2,\"devices_per_node\":2,\"nics_per_node\":0,\"links\":{\"intra\":{\"GBps\":1,\"latency_us\":1},\"inter\":{\"GBps\":1,\"latency_us\":1}}}",
       "topology: nics_per_node must be in [1, 8], got 0"},
      {"{\"nodes\":65536,\"devices_per_node\":4096,\"links\":{\"intra\":{\"GBps\":1,\"latency_us\":1},\"inter\":{\"GBps\":1,\"latency_us\":1}}}",
       "more than the supported"},
      {"{\"nodes\":2,", "topology: malformed JSON at line 1, column 11"},
      {"[1,2]", "topology: (document) must be an object, got array"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    carl_topo_t t;
    carl_status st = parse(bad[i].json, &t);
    if (st == CARL_OK) fprintf(stderr, "accepted: %s\n", bad[i].json);
    assert_true(st != CARL_OK);
    assert_msg_contains(bad[i].msg);
  }
}

static void test_ready_made_files(void **s) {
  (void)s;
  static const struct {
    const char *file;
    int nodes, dpn;
    double intra, inter;
  } files[] = {
      {"configs/topologies/h800-2x8.json", 2, 8, 160, 50},
      {"configs/topologies/h800-8x8.json", 8, 8, 160, 50},
      {"configs/topologies/test-2x2.json", 2, 2, 160, 50},
  };
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
    carl_topo_t t;
    carl_status st = carl_topo_load(files[i].file, &t);
    if (st != CARL_OK) fprintf(stderr, "%s\n", carl_errmsg());
    assert_int_equal(st, CARL_OK);
    assert_int_equal(t.nodes, files[i].nodes);
    assert_int_equal(t.devices_per_node, files[i].dpn);
    assert_true(t.link[CARL_LINK_INTRA].GBps == files[i].intra);
    assert_true(t.link[CARL_LINK_INTER].GBps == files[i].inter);
  }
  /* Every file in the directory loads. */
  static const char *all[] = {"h800-2x8", "h800-8x8", "h100-2x8", "pcie-1x8", "ascend-1x8", "ascend-4x8",
                              "test-2x2", "test-1x4", "test-rack-4x2"};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
    char path[128];
    snprintf(path, sizeof path, "configs/topologies/%s.json", all[i]);
    carl_topo_t t;
    carl_status st = carl_topo_load(path, &t);
    if (st != CARL_OK) fprintf(stderr, "%s\n", carl_errmsg());
    assert_int_equal(st, CARL_OK);
  }
  carl_topo_t t;
  assert_int_equal(carl_topo_load("configs/topologies/does-not-exist.json", &t), CARL_ERR_IO);
  assert_msg_contains("does-not-exist.json");
}

/* ---- placements ---- */

static void test_contiguous(void **s) {
  (void)s;
  carl_placement_t p;
  /* E=10, D=4: device of e is floor(4e/10): 0,0,0,1,1,2,2,2,3,3; slots = ceil(10/4) = 3. */
  assert_int_equal(carl_placement_contiguous(&p, 10, 4), CARL_OK);
  assert_int_equal(p.slots, 3);
  static const int dev[10] = {0, 0, 0, 1, 1, 2, 2, 2, 3, 3};
  for (int e = 0; e < 10; e++) {
    assert_int_equal(p.home[e], dev[e]);
    assert_int_equal(p.rep_off[e + 1] - p.rep_off[e], 1);
  }
  assert_int_equal(p.slot_expert[1 * 3 + 2], -1); /* device 1 holds 3, 4 and one empty slot */
  carl_placement_free(&p);
  /* 256 experts over 64 devices: 4 each, expert e on device e/4. */
  assert_int_equal(carl_placement_contiguous(&p, 256, 64), CARL_OK);
  assert_int_equal(p.slots, 4);
  for (int e = 0; e < 256; e++) assert_int_equal(p.home[e], e / 4);
  carl_placement_free(&p);
  assert_int_equal(carl_placement_contiguous(&p, 0, 4), CARL_ERR_INVALID);
  assert_msg_contains("experts must be in [1,");
}

static void test_replica_index(void **s) {
  (void)s;
  /* 3 experts on 4 devices, 2 slots: expert 0 on devices 0 and 3, expert 1 on 1 and 2 and 3, expert 2 on 2. */
  const int32_t table[8] = {0, -1, 1, -1, 2, 1, 1, 0};
  carl_placement_t p;
  assert_int_equal(carl_placement_from_table(&p, 3, 4, 2, table), CARL_OK);
  static const int32_t off[4] = {0, 2, 5, 6}, dev[6] = {0, 3, 1, 2, 3, 2}, home[3] = {0, 1, 2};
  for (int i = 0; i < 4; i++) assert_int_equal(p.rep_off[i], off[i]);
  for (int i = 0; i < 6; i++) assert_int_equal(p.rep_dev[i], dev[i]);
  for (int i = 0; i < 3; i++) assert_int_equal(p.home[i], home[i]);
  carl_placement_free(&p);
  /* expert 2 missing */
  const int32_t miss[4] = {0, 1, 1, -1};
  assert_int_equal(carl_placement_from_table(&p, 3, 2, 2, miss), CARL_ERR_INVALID);
  assert_msg_contains("expert 2 is on no device");
  const int32_t twice[4] = {0, 0, 1, 2};
  assert_int_equal(carl_placement_from_table(&p, 3, 2, 2, twice), CARL_ERR_INVALID);
  assert_msg_contains("devices[0] holds expert 0 twice");
  const int32_t range[4] = {0, 1, 2, 3};
  assert_int_equal(carl_placement_from_table(&p, 3, 2, 2, range), CARL_ERR_INVALID);
  assert_msg_contains("devices[1][1] = 3 is not an expert id in [0, 3)");
}

static void test_placement_json(void **s) {
  (void)s;
  carl_topo_t t;
  assert_int_equal(carl_topo_make(&t, 2, 2, 160, 3, 50, 10), CARL_OK);
  carl_placement_t p;
  const char *ok = "{\"experts\": 5, \"devices\": [[0, 1], [2, -1], [3, 0], [4, -1]]}";
  assert_int_equal(carl_placement_parse(ok, strlen(ok), &t, 5, &p), CARL_OK);
  assert_int_equal(p.E, 5);
  assert_int_equal(p.slots, 2);
  assert_int_equal(p.rep_off[1] - p.rep_off[0], 2); /* expert 0 on devices 0 and 2 */
  assert_int_equal(p.rep_dev[1], 2);
  /* save + load gives the same table */
  char path[] = "/tmp/carl_test_place_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  assert_int_equal(carl_placement_save(path, &p), CARL_OK);
  carl_placement_t q;
  assert_int_equal(carl_placement_load(path, &t, 0, &q), CARL_OK);
  assert_int_equal(q.E, 5);
  assert_int_equal(q.D, 4);
  assert_int_equal(q.slots, 2);
  assert_memory_equal(q.slot_expert, p.slot_expert, 8 * sizeof(int32_t));
  carl_placement_free(&q);
  carl_placement_free(&p);
  unlink(path);

  static const struct {
    const char *json, *msg;
  } bad[] = {
      {"{\"experts\": 5, \"devices\": [[0, 1], [2, -1], [3, 0], [3, -1]]}", "placement: expert 4 is on no device"},
      {"{\"experts\": 5, \"devices\": [[0, 1], [2, 4], [3, 0]]}",
       "placement: devices has 3 lists but the topology has 4 devices"},
      {"{\"experts\": 5, \"devices\": [[0, 1], [2, 4], [3, 0], [7, -1]]}",
       "placement: devices[3][0] must be in [-1, 4], got 7"},
      {"{\"experts\": 5, \"devices\": [[0, 1], [2, 4], [3], [0, -1]]}",
       "placement: devices[2] has 1 slots but devices[0] has 2"},
      {"{\"experts\": 4, \"devices\": [[0, 1], [2, -1], [3, 0], [3, -1]]}",
       "placement: experts is 4 but the model has 5 experts"},
      {"{\"devices\": [[0, 1], [2, 4], [3, 0], [3, -1]]}", "placement: experts: missing (required integer)"},
      {"{\"experts\": 5}", "placement: devices: missing"},
      {"{\"experts\": 5, \"devices\": {}}", "placement: devices must be an array"},
      {"{\"experts\": 5, \"devices\": [[0, 1], [2, 4], \"x\", [3, -1]]}",
       "placement: devices[2] must be an array of integers, got string \"x\""},
      {"{\"experts\": 5, \"device\": []}", "placement: (document): unknown key \"device\""},
      {"{\"experts\": 5, \"devices\": [[0, 1], [2, 4]", "placement: malformed JSON at line 1"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    carl_status st = carl_placement_parse(bad[i].json, strlen(bad[i].json), &t, 5, &p);
    if (st == CARL_OK) fprintf(stderr, "accepted: %s\n", bad[i].json);
    assert_true(st != CARL_OK);
    assert_msg_contains(bad[i].msg);
    assert_null(p.slot_expert);
  }
}


static void assert_topo_equal(const carl_topo_t *a, const carl_topo_t *b) {
  assert_int_equal(a->nodes, b->nodes);
  assert_int_equal(a->devices_per_node, b->devices_per_node);
  assert_int_equal(a->devices, b->devices);
  assert_int_equal(a->nodes_per_rack, b->nodes_per_rack);
  assert_int_equal(a->nics_per_node, b->nics_per_node);
  for (int c = 0; c < CARL_NLINK; c++) {
    assert_true(a->link[c].GBps == b->link[c].GBps);
    assert_true(a->link[c].latency_us == b->link[c].latency_us);
  }
  assert_true(a->flops == b->flops && a->peak_TFLOPS == b->peak_TFLOPS && a->efficiency == b->efficiency);
  assert_string_equal(a->device, b->device);
  assert_string_equal(a->name, b->name);
}

/* to_json writes the file format: the per-NIC bandwidths of the file (not the per-device ones the
 * struct holds), and its text parses back to the same topology. */
static void test_to_json(void **s) {
  (void)s;
  carl_topo_t t, u;
  const char *j = "{\"nodes\":4,\"devices_per_node\":2,\"nodes_per_rack\":2,\"nics_per_node\":1,\"name\":\"r\\\"q\","
                  "\"links\":{\"intra\":{\"GBps\":200,\"latency_us\":1},\"rack\":{\"GBps\":100,\"latency_us\":4},"
                  "\"inter\":{\"GBps\":50,\"latency_us\":8}},"
                  "\"flops\":{\"device\":\"H800 SXM5\",\"peak_TFLOPS\":989.4,\"efficiency\":0.6}}";
  assert_int_equal(parse(j, &t), CARL_OK);
  char *txt = NULL;
  size_t n = 0;
  assert_int_equal(carl_topo_to_json(&t, &txt, &n), CARL_OK);
  assert_int_equal(n, strlen(txt));
  /* the file's 100 and 50 GB/s per NIC, not the stored 50 and 25 per device */
  const char *rack = strstr(txt, "\"rack\""), *inter = strstr(txt, "\"inter\"");
  assert_non_null(rack);
  assert_non_null(inter);
  assert_non_null(strstr(rack, "\"GBps\":\t100"));
  assert_non_null(strstr(inter, "\"GBps\":\t50"));
  assert_non_null(strstr(txt, "\"name\":\t\"r\\\"q\""));
  assert_int_equal(parse(txt, &u), CARL_OK);
  assert_topo_equal(&t, &u);
  carl_mem_free(txt);
  /* a share that is not a power of two (3 NICs for 7 devices) still parses back exactly */
  j = "{\"nodes\":2,\"devices_per_node\":7,\"nics_per_node\":3,"
      "\"links\":{\"intra\":{\"GBps\":160,\"latency_us\":3},\"inter\":{\"GBps\":50.3,\"latency_us\":10}}}";
  assert_int_equal(parse(j, &t), CARL_OK);
  assert_int_equal(carl_topo_to_json(&t, &txt, NULL), CARL_OK);
  assert_int_equal(parse(txt, &u), CARL_OK);
  assert_topo_equal(&t, &u);
  carl_mem_free(txt);
  /* a topology made in code, and every ready-made file, through save and load */
  assert_int_equal(carl_topo_make(&t, 2, 2, 160, 3, 50, 10), CARL_OK);
  assert_int_equal(carl_topo_to_json(&t, &txt, NULL), CARL_OK);
  assert_int_equal(parse(txt, &u), CARL_OK);
  assert_topo_equal(&t, &u);
  carl_mem_free(txt);
  static const char *all[] = {"h800-2x8", "h800-8x8", "h100-2x8", "pcie-1x8", "ascend-1x8", "ascend-4x8",
                              "test-2x2", "test-1x4", "test-rack-4x2"};
  char tmp[] = "/tmp/carl_topo_XXXXXX";
  int fd = mkstemp(tmp);
  assert_true(fd >= 0);
  close(fd);
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
    char path[128];
    snprintf(path, sizeof path, "configs/topologies/%s.json", all[i]);
    assert_int_equal(carl_topo_load(path, &t), CARL_OK);
    assert_int_equal(carl_topo_save(tmp, &t), CARL_OK);
    assert_int_equal(carl_topo_load(tmp, &u), CARL_OK);
    assert_topo_equal(&t, &u);
  }
  unlink(tmp);
  /* bad input */
  assert_int_equal(carl_topo_to_json(NULL, &txt, NULL), CARL_ERR_INVALID);
  t.nodes = 0;
  assert_int_equal(carl_topo_to_json(&t, &txt, NULL), CARL_ERR_INVALID);
  assert_null(txt);
  assert_msg_contains("nodes must be in");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_parse_basic),     cmocka_unit_test(test_rack_and_nics),
      cmocka_unit_test(test_make),            cmocka_unit_test(test_bad_topologies),
      cmocka_unit_test(test_ready_made_files), cmocka_unit_test(test_contiguous),
      cmocka_unit_test(test_replica_index),   cmocka_unit_test(test_placement_json),
      cmocka_unit_test(test_to_json),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
