// `import text from './file?raw'`: a file's text, bundled by build.mjs's raw plugin (and read by vitest natively). Global: any lib file may import an asset so.
declare module '*?raw' {
  const text: string;
  export default text;
}
