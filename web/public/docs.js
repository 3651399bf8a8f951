// Swagger UI over our own OpenAPI document: everything from this origin, no validator badge
// (it would call out to validator.swagger.io), "Try it out" open with the spec's examples filled in.
window.ui = SwaggerUIBundle({
  url: "/api/v1/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  tryItOutEnabled: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
