// A windowed list or grid of fixed-height rows: only the rows in view (plus a few either side)
// exist in the DOM, so the work of a frame follows what the user sees, not how many calls there
// are. Plain ES module, no dependencies; app.js owns the items and says how to draw one.
//
// The scroller's size comes from a ResizeObserver and its scroll position from its scroll event,
// so a render never reads layout: it writes the two paddings of the rows' container (inside the
// scroller: a scroller's own padding could not shrink with it) that stand for the rows out of
// view, and brings the visible elements up to date. Elements are recycled by position: `build()` makes
// an empty one, `update(el, item, full)` draws an item into it (`full`: it showed another item
// before: nothing it shows can be kept).

/** The rows in view: the first and last (exclusive) item index, and the rows above and below. */
export function windowOf({ scrollTop, height, rowHeight, columns, count, overscan }) {
  const rows = Math.ceil(count / columns);
  const first = Math.max(0, Math.min(rows, Math.floor(scrollTop / rowHeight) - overscan));
  const last = Math.max(first, Math.min(rows, Math.ceil((scrollTop + height) / rowHeight) + overscan));
  return { start: first * columns, end: Math.min(count, last * columns), above: first, below: rows - last };
}

export class Windowed {
  /**
   * @param {HTMLElement} scroller  the element that scrolls
   * @param {HTMLElement} rows      the element inside it that holds the rows (a list, or a grid)
   * @param {object} o
   * @param {number} o.rowHeight    px per row, gap included
   * @param {number} [o.minColumnWidth]  > 0: a grid of as many columns of at least this width as fit
   * @param {number} [o.gap]        px between grid columns
   * @param {number} [o.overscan]   rows drawn beyond each edge of the view
   * @param {number} [o.padBottom]  px of padding kept below the last row
   * @param {() => HTMLElement} o.build
   * @param {(el: HTMLElement, item: any, full: boolean) => void} o.update
   * @param {() => void} [o.onChange]  the view moved or resized: render again
   */
  constructor(scroller, rows, o) {
    this.scroller = scroller;
    this.rows = rows;
    this.o = { minColumnWidth: 0, gap: 0, overscan: 3, padBottom: 0, ...o };
    this.items = [];
    this.els = [];
    this.start = 0;
    this.scrollTop = 0;
    this.height = 0;
    this.width = 0;
    this.columns = 1;
    this.pads = "";
    this.pendingScroll = false;
    scroller.addEventListener("scroll", () => {
      this.scrollTop = scroller.scrollTop;
      this.o.onChange?.();
    }, { passive: true });
    new ResizeObserver((entries) => {
      const box = entries[entries.length - 1].contentRect;
      this.height = box.height;
      this.width = box.width;
      const { minColumnWidth: min, gap } = this.o;
      const columns = min > 0 ? Math.max(1, Math.floor((box.width + gap) / (min + gap))) : 1;
      if (columns !== this.columns && min > 0) rows.style.gridTemplateColumns = `repeat(${columns}, minmax(0, 1fr))`;
      this.columns = columns;
      this.o.onChange?.();
    }).observe(scroller);
  }

  /** Draw `items` (each with an `id`); `dirty`: ids whose item changed; `all`: update every row in view. */
  render(items, dirty, all = false) {
    this.items = items;
    const { rowHeight, overscan, padBottom } = this.o;
    const w = windowOf({ scrollTop: this.scrollTop, height: this.height, rowHeight, columns: this.columns, count: items.length, overscan });
    const pads = `${w.above * rowHeight}/${w.below * rowHeight + padBottom}`;
    if (pads !== this.pads) {
      this.pads = pads;
      this.rows.style.paddingTop = `${w.above * rowHeight}px`;
      this.rows.style.paddingBottom = `${w.below * rowHeight + padBottom}px`;
    }
    const count = w.end - w.start;
    while (this.els.length < count) {
      const el = this.o.build();
      this.els.push(el);
      this.rows.append(el);
    }
    while (this.els.length > count) this.els.pop().remove();
    if (this.pendingScroll) {
      this.pendingScroll = false;
      this.scroller.scrollTop = this.scrollTop; // now that the paddings make room for it
    }
    this.start = w.start;
    for (let i = 0; i < count; i += 1) {
      const el = this.els[i];
      const item = items[w.start + i];
      const moved = el._item !== item.id;
      if (moved || all || dirty.has(item.id)) {
        this.o.update(el, item, moved);
        el._item = item.id;
      }
      const pos = String(w.start + i + 1);
      if (el.getAttribute("aria-posinset") !== pos) el.setAttribute("aria-posinset", pos);
      if (el._size !== items.length) {
        el._size = items.length;
        el.setAttribute("aria-setsize", String(items.length));
      }
    }
  }

  /** The element drawing item `id`, if it is in view. */
  elementOf(id) {
    return this.els.find((el) => el._item === id) || null;
  }

  /** Scroll just enough that item `index` is in view (a write; the next render draws it). */
  reveal(index) {
    const { rowHeight } = this.o;
    const row = Math.floor(index / this.columns);
    const top = row * rowHeight;
    let next = this.scrollTop;
    if (top < next) next = top;
    else if (top + rowHeight > next + this.height) next = top + rowHeight - this.height;
    if (next !== this.scrollTop) {
      this.scrollTop = Math.max(0, next);
      this.pendingScroll = true;
    }
  }
}
