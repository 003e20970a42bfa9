/* The close callback for a libuv handle that is an allocation of its own (tms_new):
 * uv_close(handle, tms_uv_free_on_close) frees it once libuv is done with it. */
#ifndef TMS_CORE_UV_CLOSE_H
#define TMS_CORE_UV_CLOSE_H

#include <stdlib.h>
#include <uv.h>

static inline void tms_uv_free_on_close(uv_handle_t *h)
{
    free(h);
}

#endif
