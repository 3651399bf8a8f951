// Loads blueprints/static/docs.js against a minimal DOM stub and a given openapi.json; exits 1 when
// fewer than 8 operations render. Run by tests/test_openapi.py when node is installed.
const spec = JSON.parse(require("fs").readFileSync(process.argv[2], "utf8"));
class El { constructor(t){this.tag=t;this.kids=[];this.attrs={};this.textContent="";this.listeners={};}
  setAttribute(k,v){this.attrs[k]=v;} append(...k){this.kids.push(...k);} addEventListener(e,f){this.listeners[e]=f;} }
const byId = {title:new El("h1"), desc:new El("p"), ops:new El("div"), apikey:Object.assign(new El("input"),{value:""})};
global.Node = El;
global.document = { createElement:(t)=>new El(t), createTextNode:(t)=>({text:t}), getElementById:(i)=>byId[i] };
global.performance = { now: () => 0 };
let count = 0;
global.fetch = (url) => { count++; return Promise.resolve({ json: () => Promise.resolve(spec) }); };
require(process.argv[3]);
setTimeout(() => { const ops = byId.ops.kids.length; console.log("title:", byId.title.textContent, "ops:", ops, "fetches:", count); if (ops < 8) process.exit(1); }, 100);
