#ifndef VIEWPORTD_CPOSTGRES_SHIM_H
#define VIEWPORTD_CPOSTGRES_SHIM_H
// libpq: PostgreSQL's client library, for the store nodes of a cluster share (cluster.database_url).
#include <libpq-fe.h>

/* Fields of a failed result (NULL when it has none): the PG_DIAG_* names are character macros Swift does not
   import. */
static inline const char *vpd_pq_sqlstate(const PGresult *result) {
    return PQresultErrorField(result, PG_DIAG_SQLSTATE);
}

static inline const char *vpd_pq_message(const PGresult *result) {
    return PQresultErrorField(result, PG_DIAG_MESSAGE_PRIMARY);
}

#endif
