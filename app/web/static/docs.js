// The API explorer at /docs: Swagger UI from this service's own files (vendor/, a pinned
// swagger-ui-dist), no third-party script, under the same Content-Security-Policy as
// every page (no inline script).
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
