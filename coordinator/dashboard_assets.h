// The dashboard's page, login form, script and stylesheet (coordinator/web/), compiled in by
// cmake/EmbedWebAssets.cmake.
#ifndef MOEC_COORDINATOR_DASHBOARD_ASSETS_H_
#define MOEC_COORDINATOR_DASHBOARD_ASSETS_H_

namespace moec::coordinator::web {

extern const char kIndexHtml[];
extern const char kLoginHtml[];  // "{{message}}" stands for an (escaped) error message
extern const char kAppJs[];
extern const char kAppCss[];

}  // namespace moec::coordinator::web

#endif  // MOEC_COORDINATOR_DASHBOARD_ASSETS_H_
