/* Compiled by ctest only (the build_layer_* tests in CMakeLists.txt): the one header
 * named by TMS_RULE_HEADER, seen through the include directories of one layer's
 * library. A header the layer may use must build; one it may not must be not found. */
#include TMS_RULE_HEADER

int tms_layer_rule_probe(void);

int tms_layer_rule_probe(void)
{
    return 0;
}
